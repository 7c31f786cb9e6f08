#![no_main]
// The body lives in tests/fuzz_bodies, where the stable corpus replay runs it too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz_bodies::run("kubeconfig", data));
