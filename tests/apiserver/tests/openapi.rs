//! OpenAPI v2/v3 and server-side field validation, driven by kubectl's default paths: create, apply
//! (client- and server-side), replace, diff and explain with `--validate=strict` (the default).

mod common;
use common::*;
use serde_json::Value;

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: NAME
  labels:
    a: \"1\"
    b: \"2\"
spec:
  podCIDR: 10.0.0.0/24
";

fn node_yaml(name: &str) -> String {
    NODE.replace("NAME", name)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn create_apply_replace_diff_explain(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let k = |args: Vec<String>| {
        let env = &env;
        let kc = kc.clone();
        async move {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            env.kubectl_as(bin, &kc, &a).await
        }
    };
    let file = |name: &str, text: &str| {
        let p = env.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().to_string()
    };

    // create -f with the default --validate=strict: kubectl asks the server to validate.
    let f1 = file("n1.yaml", &node_yaml("n1"));
    let out = ok(&k(vec!["create".into(), "-f".into(), f1.clone()]).await);
    assert!(out.contains("node/n1 created"), "{out}");
    let creates: Vec<_> = env
        .srv
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "create")
        .collect();
    assert!(
        creates
            .iter()
            .any(|r| r.query.contains("fieldValidation=Strict")),
        "kubectl did not find fieldValidation in /openapi/v3: {creates:?}"
    );
    assert!(env
        .srv
        .request_log()
        .iter()
        .any(|r| r.path.starts_with("/openapi/v3/api/v1") && r.status == 200));

    // Client-side apply, twice: the second changes one label and drops another.
    let f2 = file("n2.yaml", &node_yaml("n2"));
    let out = ok(&k(vec!["apply".into(), "-f".into(), f2.clone()]).await);
    assert!(out.contains("node/n2 created"), "{out}");
    let n = env.srv.get("/api/v1/nodes/n2").unwrap();
    let last = n["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("\"b\":\"2\""), "{n}");
    let changed = node_yaml("n2")
        .replace("a: \"1\"", "a: \"9\"")
        .replace("    b: \"2\"\n", "");
    let f2b = file("n2b.yaml", &changed);

    // diff: exit 1 with the change shown, nothing written (dry run).
    let o = k(vec!["diff".into(), "-f".into(), f2b.clone()]).await;
    let d = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{d} {}", stderr(&o));
    assert!(
        d.contains("-    a: \"1\"") && d.contains("+    a: \"9\""),
        "{d}"
    );
    assert!(d.contains("-    b: \"2\""), "{d}");
    assert_eq!(
        env.srv.get("/api/v1/nodes/n2").unwrap()["metadata"]["labels"]["a"],
        "1"
    );

    let out = ok(&k(vec!["apply".into(), "-f".into(), f2b.clone()]).await);
    assert!(out.contains("node/n2 configured"), "{out}");
    let n = env.srv.get("/api/v1/nodes/n2").unwrap();
    assert_eq!(n["metadata"]["labels"]["a"], "9", "{n}");
    assert!(n["metadata"]["labels"].get("b").is_none(), "{n}");
    let last = n["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    assert!(
        last.contains("\"a\":\"9\"") && !last.contains("\"b\""),
        "{last}"
    );

    let o = k(vec!["diff".into(), "-f".into(), f2b.clone()]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{} {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );

    // replace -f
    let f1b = file("n1b.yaml", &node_yaml("n1").replace("b: \"2\"", "b: \"3\""));
    let out = ok(&k(vec!["replace".into(), "-f".into(), f1b]).await);
    assert!(out.contains("node/n1 replaced"), "{out}");
    assert_eq!(
        env.srv.get("/api/v1/nodes/n1").unwrap()["metadata"]["labels"]["b"],
        "3"
    );

    // explain: upstream's field description and type, from /openapi/v3 and from /openapi/v2
    // (protobuf: client-go's OpenAPISchema()).
    for extra in [None, Some("--output=plaintext-openapiv2")] {
        let mut args = vec!["explain".to_string(), "node.spec.taints".to_string()];
        args.extend(extra.map(String::from));
        let out = ok(&k(args).await);
        assert!(out.contains("If specified, the node's taints."), "{out}");
        assert!(
            out.contains("effect") && out.contains("-required-"),
            "{out}"
        );
    }
    let v2: Vec<_> = env
        .srv
        .request_log()
        .into_iter()
        .filter(|r| r.path == "/openapi/v2")
        .collect();
    assert!(
        !v2.is_empty() && v2.iter().all(|r| r.status == 200),
        "{v2:?}"
    );

    // Server-side apply of a valid object.
    let f3 = file("n3.yaml", &node_yaml("n3"));
    let out = ok(&k(vec![
        "apply".into(),
        "--server-side".into(),
        "-f".into(),
        f3,
    ])
    .await);
    assert!(out.contains("node/n3 serverside-applied"), "{out}");
    assert_eq!(
        env.srv.get("/api/v1/nodes/n3").unwrap()["metadata"]["labels"]["a"],
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_creates_applies_replaces_diffs_and_explains_with_openapi() {
    create_apply_replace_diff_explain(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_127_creates_applies_replaces_diffs_and_explains_with_openapi() {
    create_apply_replace_diff_explain(KUBECTL_OLD.as_str()).await;
}

async fn unknown_fields(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let bad = |name: &str| {
        let p = env.path(&format!("{name}.yaml"));
        std::fs::write(&p, node_yaml(name) + "  foo: bar\n").unwrap();
        p.to_string_lossy().to_string()
    };

    let f = bad("s1");
    let e = err(&env.kubectl_as(bin, &kc, &["create", "-f", &f]).await);
    assert!(
        e.contains("Error from server (BadRequest)")
            && e.contains(
                "Node in version \"v1\" cannot be handled as a Node: strict decoding error: unknown field \"spec.foo\""
            ),
        "{e}"
    );
    assert!(env.srv.get("/api/v1/nodes/s1").is_none());

    let f = bad("w1");
    let o = env
        .kubectl_as(bin, &kc, &["create", "--validate=warn", "-f", &f])
        .await;
    let out = ok(&o);
    assert!(out.contains("node/w1 created"), "{out}");
    assert!(
        stderr(&o).contains("Warning: unknown field \"spec.foo\""),
        "{}",
        stderr(&o)
    );
    let n = env.srv.get("/api/v1/nodes/w1").unwrap();
    assert!(n["spec"].get("foo").is_none(), "{n}");
    assert_eq!(n["spec"]["podCIDR"], "10.0.0.0/24");

    let f = bad("i1");
    let o = env
        .kubectl_as(bin, &kc, &["create", "--validate=false", "-f", &f])
        .await;
    ok(&o);
    assert!(!stderr(&o).contains("unknown field"), "{}", stderr(&o));
    let n = env.srv.get("/api/v1/nodes/i1").unwrap();
    assert!(n["spec"].get("foo").is_none(), "{n}");

    // Patches are judged on the patched object; kubectl patch sends no fieldValidation, so the
    // server's default (Warn) applies.
    let o = env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "node",
                "i1",
                "--type=merge",
                "-p",
                r#"{"spec":{"bar":1}}"#,
            ],
        )
        .await;
    assert!(ok(&o).contains("patched (no change)"));
    assert!(
        stderr(&o).contains("Warning: unknown field \"spec.bar\""),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_unknown_fields_follow_validate_flag() {
    unknown_fields(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_127_unknown_fields_follow_validate_flag() {
    unknown_fields(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_over_http() {
    let env = Env::start().await;
    // v2 as protobuf (what client-go's OpenAPISchema asks for): a gnostic Document, field 1 "2.0".
    let proto = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let returned = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
    let hdr = env.path("h.txt");
    let h = hdr.to_string_lossy().to_string();
    let out = env.path("v2.pb");
    let o = out.to_string_lossy().to_string();
    let accept = format!("Accept: {proto}");
    let (code, _) = env
        .curl_admin(&["-H", &accept, "-D", &h, "-o", &o], "/openapi/v2")
        .await;
    assert_eq!(code, 200);
    let headers = std::fs::read_to_string(&hdr).unwrap().to_lowercase();
    assert!(
        headers.contains(&format!("content-type: {returned}")),
        "{headers}"
    );
    let pb = std::fs::read(&out).unwrap();
    assert_eq!(&pb[..5], b"\x0a\x032.0", "{:?}", &pb[..16]);

    let (code, body) = env.curl_admin(&[], "/openapi/v2").await;
    assert_eq!(code, 200);
    let v2: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v2["definitions"]["io.k8s.api.core.v1.Node"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Node"
    );
    let patch_params = v2["paths"]["/api/v1/nodes/{name}"]["patch"]["parameters"]
        .as_array()
        .unwrap();
    assert!(patch_params
        .iter()
        .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
    assert!(patch_params.iter().any(|p| p["name"] == "dryRun"));

    let (code, body) = env.curl_admin(&[], "/openapi/v3").await;
    assert_eq!(code, 200);
    let idx: Value = serde_json::from_str(&body).unwrap();
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    let (code, body) = env.curl_admin(&[], &url).await;
    assert_eq!(code, 200);
    let apps: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(apps["openapi"], "3.0.0");
    let ds = &apps["components"]["schemas"]["io.k8s.api.apps.v1.DaemonSet"];
    assert_eq!(ds["x-kubernetes-group-version-kind"][0]["group"], "apps");
    let containers =
        &apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-list-map-keys"][0], "name");
    // A stale hash redirects to the current document (kube-openapi handler3).
    let (code, _) = env.curl_admin(&[], "/openapi/v3/apis/apps/v1?hash=0").await;
    assert_eq!(code, 301);

    // Server-side apply refuses undeclared fields whatever fieldValidation says.
    let h = format!("Authorization: Bearer {}", env.srv.admin_token());
    let (code, body) = env
        .curl(
            &[
                "-X",
                "PATCH",
                "-H",
                &h,
                "-H",
                "Content-Type: application/apply-patch+yaml",
                "--data-binary",
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: x1\nspec:\n  foo: 1\n",
            ],
            "/api/v1/nodes/x1?fieldManager=t&fieldValidation=Ignore",
        )
        .await;
    assert_eq!(code, 500, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        st["message"],
        "failed to create typed patch object (/x1; /v1, Kind=Node): .spec.foo: field not declared in schema"
    );
    assert!(st.get("reason").is_none(), "{st}");

    // Duplicate fields: Strict refuses, Warn warns once per field.
    let dup = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"d1","name":"d1"}}"#;
    let (code, body) = env
        .curl(
            &[
                "-X",
                "POST",
                "-H",
                &h,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                dup,
            ],
            "/api/v1/nodes?fieldValidation=Strict",
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("strict decoding error: duplicate field \\\"metadata.name\\\""),
        "{body}"
    );
    let (code, body) = env
        .curl(
            &[
                "-X",
                "POST",
                "-H",
                &h,
                "-H",
                "Content-Type: application/json",
                "-D",
                &hdr.to_string_lossy(),
                "--data-binary",
                dup,
            ],
            "/api/v1/nodes",
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let headers = std::fs::read_to_string(&hdr).unwrap();
    assert!(
        headers.contains(r#"warning: 299 - "duplicate field \"metadata.name\"""#)
            || headers.contains(r#"Warning: 299 - "duplicate field \"metadata.name\"""#),
        "{headers}"
    );
}
