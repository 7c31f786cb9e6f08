//! Object validation (422 Invalid) as kube-apiserver v1.33 answers it, seen through real kubectl
//! (current and 1.27) and, for the Status body itself, raw HTTP.

mod common;
use common::*;
use serde_json::{json, Value};

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

async fn bad_labels_and_taints_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));

    // kubectl checks label values itself (same apimachinery rule) ...
    let e = err(&env
        .kubectl_as(bin, &kc, &["label", "node", "n1", "bad=va lue"])
        .await);
    assert!(e.contains(LABEL_VALUE_MSG), "{e}");
    // ... and the server refuses what gets past it, with upstream's message.
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "node",
                "n1",
                "-p",
                r#"{"metadata":{"labels":{"bad":"va lue"}}}"#,
            ],
        )
        .await);
    assert!(
        e.contains(&format!(
            "The Node \"n1\" is invalid: metadata.labels: Invalid value: \"va lue\": {LABEL_VALUE_MSG}"
        )),
        "{e}"
    );

    // A bad taint effect: kubectl refuses it; a patch reaches the server and is refused there.
    let e = err(&env
        .kubectl_as(bin, &kc, &["taint", "node", "n1", "k=v:Sometimes"])
        .await);
    assert!(e.contains("Sometimes"), "{e}");
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "node",
                "n1",
                "-p",
                r#"{"spec":{"taints":[{"key":"k","value":"v","effect":"Sometimes"}]}}"#,
            ],
        )
        .await);
    assert!(
        e.contains("The Node \"n1\" is invalid: metadata.taints[0].effect: Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""),
        "{e}"
    );
    // Two taints with one key and effect.
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "node",
                "n1",
                "--type=merge",
                "-p",
                r#"{"spec":{"taints":[{"key":"k","value":"a","effect":"NoSchedule"},{"key":"k","value":"b","effect":"NoSchedule"}]}}"#,
            ],
        )
        .await);
    assert!(
        e.contains("metadata.taints[1]: Duplicate value: core.Taint{Key:\"k\", Value:\"b\", Effect:\"NoSchedule\", TimeAdded:<nil>}: taints must be unique by key and effect pair"),
        "{e}"
    );
    // Nothing of it was stored.
    let n = env.srv.get("/api/v1/nodes/n1").unwrap();
    assert!(n["metadata"]["labels"].get("bad").is_none());
    assert!(n["spec"].get("taints").is_none(), "{n}");

    // A Node whose name is not a DNS subdomain.
    let f = env.path("bad-node.json");
    std::fs::write(
        &f,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "Bad_Node"}}).to_string(),
    )
    .unwrap();
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &["create", "--validate=false", "-f", f.to_str().unwrap()],
        )
        .await);
    assert!(
        e.contains("The Node \"Bad_Node\" is invalid: metadata.name: Invalid value: \"Bad_Node\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
        "{e}"
    );
    assert!(env.srv.get("/api/v1/nodes/Bad_Node").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_is_refused_bad_labels_taints_and_names() {
    bad_labels_and_taints_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_is_refused_bad_labels_taints_and_names() {
    bad_labels_and_taints_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_status_carries_kind_name_and_causes() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    let (code, body) = env
        .curl_admin(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "-d",
                r#"{"metadata":{"labels":{"bad":"va lue","-x":"ok"},"finalizers":["example.com/ok","mine"]}}"#,
            ],
            "/api/v1/nodes/n1",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["name"], "n1");
    assert_eq!(s["details"]["kind"], "Node");
    let causes = s["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 3, "{body}");
    assert_eq!(causes[0]["field"], "metadata.labels");
    assert_eq!(causes[0]["reason"], "FieldValueInvalid");
    assert!(causes[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid value: \"-x\": name part must consist of"));
    assert_eq!(
        causes[1]["message"],
        format!("Invalid value: \"va lue\": {LABEL_VALUE_MSG}")
    );
    assert_eq!(causes[2]["field"], "metadata.finalizers[1]");
    assert!(s["message"]
        .as_str()
        .unwrap()
        .starts_with("Node \"n1\" is invalid: [metadata.labels: Invalid value: \"-x\""));

    // Lease spec: values and types.
    let (code, body) = env
        .curl_admin(
            &["-X", "POST", "-H", "Content-Type: application/json", "-d",
              r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l1"},"spec":{"leaseDurationSeconds":0}}"#],
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["message"], "Lease.coordination.k8s.io \"l1\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0");
    assert_eq!(s["details"]["group"], "coordination.k8s.io");
    assert_eq!(s["details"]["kind"], "Lease");
    let (code, body) = env
        .curl_admin(
            &["-X", "POST", "-H", "Content-Type: application/json", "-d",
              r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l1"},"spec":{"leaseDurationSeconds":"40"}}"#],
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("json: cannot unmarshal string into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32"), "{body}");

    // Namespaces are DNS-1123 labels: no dots.
    let (code, body) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a.b"}}"#,
            ],
            "/api/v1/namespaces",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("Namespace \\\"a.b\\\" is invalid: metadata.name: Invalid value: \\\"a.b\\\": must not contain dots"), "{body}");
}
