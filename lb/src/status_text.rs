//! `keel-lb status`: the snapshot as aligned text tables for a terminal.

use crate::status::Snapshot;

/// Appends a table (`keel_common::table`: number columns right-aligned, cells one line).
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let mut t = keel_common::table::Table::new(head.iter().copied()).max_cell(160);
    for r in rows {
        t.row(r.iter().cloned());
    }
    out.push_str(&t.render());
}

fn ago(now: f64, t: Option<f64>) -> String {
    t.map_or("-".into(), |t| format!("{} ago", dur(now - t)))
}

fn dur(s: f64) -> String {
    keel_common::table::ago(s.max(0.0) as i64)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let reload = match &s.config.last_reload {
        None => "none".to_string(),
        Some(r) if r.ok => format!("ok {}", ago(s.now, Some(r.at))),
        Some(r) => format!(
            "FAILED {}: {}",
            ago(s.now, Some(r.at)),
            r.error.as_deref().unwrap_or_default()
        ),
    };
    o.push_str(&format!(
        "keel-lb {}  config {} (generation {})  last reload: {}  up {}\n",
        s.version,
        s.config.path,
        s.config.generation,
        reload,
        dur(s.now - s.started_at)
    ));
    o.push_str("\nFRONTENDS\n");
    let rows: Vec<Vec<String>> = s
        .frontends
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.listen.clone(),
                f.protocol.clone(),
                f.pool.clone(),
                format!("{}/{}", f.current, f.limit),
                f.total.to_string(),
                format!("{:.1}", f.rate),
                f.bytes_in.to_string(),
                f.bytes_out.to_string(),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "NAME",
            "LISTEN",
            "PROTO",
            "POOL",
            "CUR/LIMIT",
            "TOTAL",
            "RATE/S",
            "BYTES IN",
            "BYTES OUT",
        ],
        &rows,
    );
    o.push_str("\nBACKENDS\n");
    let mut rows = Vec::new();
    for p in &s.pools {
        for b in &p.backends {
            let check = b.last_check.as_ref().map_or("-".to_string(), |c| {
                if c.ok {
                    format!("ok {}", ago(s.now, Some(c.at)))
                } else {
                    format!("FAIL {}: {}", ago(s.now, Some(c.at)), c.reason)
                }
            });
            rows.push(vec![
                p.name.clone(),
                b.address.clone(),
                if b.overridden {
                    format!("{}*", b.state)
                } else {
                    b.state.clone()
                },
                b.weight.to_string(),
                format!("{}/{}", b.failed_checks, b.checks),
                b.downs.to_string(),
                dur(b.downtime_seconds),
                ago(s.now, b.last_change),
                b.current.to_string(),
                opt(b.total),
                opt(b.connect_errors),
                check,
            ]);
        }
    }
    table(
        &mut o,
        &[
            "POOL",
            "BACKEND",
            "STATE",
            "WEIGHT",
            "FAILS/CHECKS",
            "DOWNS",
            "DOWNTIME",
            "CHANGED",
            "CUR",
            "TOTAL",
            "CONN ERR",
            "LAST CHECK",
        ],
        &rows,
    );
    if s.pools
        .iter()
        .any(|p| p.backends.iter().any(|b| b.overridden))
    {
        o.push_str(
            "* changed at run time (keel-lb backend), kept until the config file says otherwise\n",
        );
    }
    if let Some(v) = &s.vrrp {
        o.push_str(&format!(
            "\nVRRP ROUTERS ({} of {} running)\n",
            v.running, v.configured
        ));
        let rows: Vec<Vec<String>> = v
            .routers
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.vrid.to_string(),
                    r.interface.clone(),
                    r.state.clone(),
                    r.priority.to_string(),
                    r.master.clone().unwrap_or_else(|| "-".into()),
                    r.vips.join(","),
                    format!("{}/{}", r.adverts_received, r.adverts_sent),
                    r.drops.values().sum::<u64>().to_string(),
                    r.last_transition.as_ref().map_or("-".into(), |t| {
                        format!(
                            "{} {}->{}: {}",
                            ago(s.now, Some(t.at)),
                            t.from,
                            t.to,
                            t.reason
                        )
                    }),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "ROUTER",
                "VRID",
                "IFACE",
                "STATE",
                "PRIO",
                "MASTER",
                "VIPS",
                "ADV IN/OUT",
                "DROPS",
                "LAST TRANSITION",
            ],
            &rows,
        );
    }
    if let Some(b) = &s.bgp {
        let announced = b.vips.iter().filter(|v| v.announced).count();
        o.push_str(&format!(
            "\nBGP ({announced} of {} VIPs announced on {}{}; FRR {}{})\n",
            b.vips.len(),
            b.interface,
            if b.draining { ", leaving" } else { "" },
            b.frr.state,
            b.frr
                .error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        if let Some(e) = &b.error {
            o.push_str(&format!("NOT ANNOUNCING: {e}\n"));
        }
        let rows: Vec<Vec<String>> = b
            .neighbors
            .iter()
            .map(|n| {
                vec![
                    n.peer.clone(),
                    n.remote_as.map_or("-".into(), |a| a.to_string()),
                    n.state.clone(),
                    n.bfd.clone().unwrap_or_else(|| "-".into()),
                    n.prefixes_sent.to_string(),
                    n.prefixes_received.to_string(),
                ]
            })
            .collect();
        table(
            &mut o,
            &["NEIGHBOR", "AS", "STATE", "BFD", "SENT", "RECEIVED"],
            &rows,
        );
        if let Some(h) = &b.handoff {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            o.push_str(&format!(
                "handoff: peers {}; leaving {}; forwarding to {}{}\n",
                list(&h.peers),
                list(&h.leaving),
                list(&h.forwarding_to),
                h.error
                    .as_ref()
                    .map(|e| format!("; ERROR {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(n) = &s.nat {
        o.push_str(&format!(
            "\nNAT (mode: nat frontends; the kernel forwards): {}\n",
            match (&n.error, n.installed) {
                (Some(e), true) => format!("installed; ERROR {e}"),
                (Some(e), false) if n.proxied => {
                    format!("NOT INSTALLED, served by the proxy meanwhile: {e}")
                }
                (Some(e), false) => format!("NOT INSTALLED: {e}"),
                (None, _) => "installed".into(),
            }
        ));
        let rows: Vec<Vec<String>> = n
            .frontends
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.listen.clone(),
                    f.protocol.clone(),
                    if f.backends.is_empty() {
                        "none (refused)".into()
                    } else {
                        f.backends.join(", ")
                    },
                    crate::nat::flows_text(&f.flows),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "NAME",
                "LISTEN",
                "PROTO",
                "NEW CONNECTIONS TO",
                "OPEN FLOWS",
            ],
            &rows,
        );
    }
    if let Some(list) = s.services.as_ref().and_then(|v| v["services"].as_array()) {
        o.push_str("\nSERVICES\n");
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|v| {
                let (mut up, mut all) = (0, 0);
                let mut ports = Vec::new();
                for p in v["ports"].as_array().into_iter().flatten() {
                    ports.push(format!("{}/{}", p["port"], text(&p["protocol"])));
                    for b in p["backends"].as_array().into_iter().flatten() {
                        all += 1;
                        up += usize::from(b["up"].as_bool() == Some(true));
                    }
                }
                let ls = &v["lastSync"];
                vec![
                    text(&v["service"]),
                    v["ips"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| text(&i["ip"]))
                        .collect::<Vec<_>>()
                        .join(","),
                    ports.join(","),
                    format!("{up}/{all}"),
                    if ls.is_object() {
                        format!(
                            "{} {}",
                            if ls["ok"].as_bool() == Some(true) {
                                "ok"
                            } else {
                                "FAILED"
                            },
                            ago(s.now, ls["at"].as_f64())
                        )
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        table(
            &mut o,
            &["SERVICE", "IPS", "PORTS", "UP/BACKENDS", "LAST SYNC"],
            &rows,
        );
    }
    o.push_str("\nRECENT EVENTS\n");
    let rows: Vec<Vec<String>> = s
        .events
        .iter()
        .take(15)
        .map(|e| {
            vec![
                ago(s.now, Some(e.at)),
                e.kind.clone(),
                e.subject.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&mut o, &["WHEN", "KIND", "SUBJECT", "WHAT"], &rows);
    o
}
