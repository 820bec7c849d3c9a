#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod bad_input;
mod differential;
mod fuzz;
mod schemas;

use std::path::PathBuf;

/// The repository's `schemas/` directory.
pub fn schema_dir() -> PathBuf {
    // At run time, not compile time: a binary reused from another checkout's build reads this one.
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../../schemas")
}

/// The `examples` array of `schemas/<name>.schema.json`.
pub fn examples(name: &str) -> Vec<serde_json::Value> {
    let path = schema_dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    schema["examples"]
        .as_array()
        .expect("schema has examples")
        .clone()
}
