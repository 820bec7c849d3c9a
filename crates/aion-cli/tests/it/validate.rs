//! `aion validate` over the repository's pipelines, and over a copy broken in two places.

use crate::Stack;

#[test]
fn the_pipelines_validate_and_broken_copies_are_named() {
    let s = Stack::offline();
    let pipelines = crate::repo_file("pipelines");
    let pipelines = pipelines.to_str().unwrap();
    let out = s.run(&["validate", pipelines]);
    for file in [
        "windows.toml",
        "gate.toml",
        "window_events.sql",
        "entity_heatmap.sql",
        "entity_quality.sql",
        "trigger_entities.sql",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(file)),
            "{file}: {out}"
        );
    }

    let broken = s.state.path().join("pipelines");
    std::fs::create_dir(&broken).unwrap();
    for entry in std::fs::read_dir(pipelines).unwrap().flatten() {
        std::fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
    }
    let gate = std::fs::read_to_string(broken.join("gate.toml")).unwrap();
    std::fs::write(
        broken.join("gate.toml"),
        gate.replace("tau_fallback = 0.18", "tau_fallback = 1.8"),
    )
    .unwrap();
    std::fs::write(
        broken.join("entity_heatmap.sql"),
        "SELECT entity FROM entities GROUP BY",
    )
    .unwrap();
    let out = s.aion().arg("validate").arg(&broken).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for file in ["gate.toml", "entity_heatmap.sql"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("invalid") && l.contains(file)),
            "{file}: {text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("windows.toml")),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of"));
}
