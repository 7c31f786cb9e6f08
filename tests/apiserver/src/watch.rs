//! `watch=true` streams: initial events (snapshot or replay from a resourceVersion), then live
//! events filtered by namespace and selectors (with ADDED/DELETED on selector transitions, as the
//! watch cache does), BOOKMARKs when asked, ERROR 410 when the start point is compacted.

use crate::handler::{with_type, Body};
use crate::resources::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Event, EventType};
use crate::table;
use crate::State;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub struct WatchParams {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub table: bool,
}

impl WatchParams {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = match &self.namespace {
            Some(ns) => {
                obj.pointer("/metadata/namespace")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    == ns
            }
            None => true,
        };
        ns_ok && self.labels.matches_object(obj) && self.fields.matches(obj)
    }

    fn of_resource(&self, e: &Event) -> bool {
        (e.group.as_str(), e.resource.as_str()) == crate::eventconv::storage(self.def)
    }

    /// The event this watcher sees for a store event, if any.
    fn translate(&self, e: &Event) -> Option<(&'static str, Value)> {
        if !self.of_resource(e) {
            return None;
        }
        let new_ok = self.matches(&e.obj);
        let old_ok = e.old.as_ref().is_some_and(|o| self.matches(o));
        match e.etype {
            EventType::Added => new_ok.then(|| ("ADDED", e.obj.clone())),
            EventType::Deleted => old_ok.then(|| ("DELETED", e.obj.clone())),
            EventType::Modified => match (old_ok, new_ok) {
                (true, true) => Some(("MODIFIED", e.obj.clone())),
                (false, true) => Some(("ADDED", e.obj.clone())),
                (true, false) => {
                    let mut o = e.old.clone().unwrap_or_default();
                    o["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                    Some(("DELETED", o))
                }
                (false, false) => None,
            },
        }
    }

    fn frame(&self, etype: &str, obj: Value) -> Bytes {
        let obj = crate::eventconv::output(self.def, with_type(self.def, obj));
        let obj = if self.table && etype != "BOOKMARK" && etype != "ERROR" {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            table::to_table(self.def, &[&obj], &rv, "Metadata")
        } else {
            obj
        };
        let mut line =
            serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn send(tx: &Tx, b: Bytes) -> bool {
    tx.send(Ok(Frame::data(b))).await.is_ok()
}

pub fn start(state: Arc<State>, p: WatchParams) -> Result<hyper::Response<Body>, ApiError> {
    let start_rv: Option<u64> = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let (mut sub, current_rv, expired) = {
        let store = state.store();
        let sub = store.subscribe();
        let cur = store.current_rv();
        let mut expired = false;
        match start_rv {
            None => {
                for o in store.list(p.def, p.namespace.as_deref()) {
                    if p.matches(o) {
                        initial.push(p.frame("ADDED", o.clone()));
                    }
                }
            }
            Some(rv) if rv < store.compacted_rv() => {
                let e = ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    store.compacted_rv() + 1
                ));
                initial.push(p.frame("ERROR", e.to_status()));
                expired = true;
            }
            Some(rv) => {
                for e in store.events_since(rv) {
                    if let Some((t, o)) = p.translate(e) {
                        initial.push(p.frame(t, o));
                    }
                }
            }
        }
        (sub, cur, expired)
    };
    let bookmark_every = state.settings().bookmark_interval;
    tokio::spawn(async move {
        for b in initial {
            if !send(&tx, b).await {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(p.timeout);
        tokio::pin!(deadline);
        let mut last_rv = start_rv.unwrap_or(current_rv).max(current_rv);
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = bookmark.tick(), if p.bookmarks => {
                    let obj = json!({"kind": p.def.kind, "apiVersion": p.def.api_version(),
                                     "metadata": {"resourceVersion": last_rv.to_string(), "creationTimestamp": null}});
                    if !send(&tx, p.frame("BOOKMARK", obj)).await {
                        return;
                    }
                }
                ev = sub.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= current_rv {
                            continue;
                        }
                        last_rv = e.rv;
                        if let Some((t, o)) = p.translate(&e) {
                            if !send(&tx, p.frame(t, o)).await {
                                return;
                            }
                        }
                    }
                    // A watcher too slow for the event rate is closed, as the watch cache does.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let body = StreamBody::new(stream).boxed();
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}
