//! `aion completions`: the script a shell loads completes aion's own subcommands.

use std::process::Command;

#[test]
fn the_bash_completion_script_completes_subcommands() {
    let script = Command::new(env!("CARGO_BIN_EXE_aion"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aion.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    // As bash calls it: the command, the word being completed, the word before it.
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 _aion aion \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        crate::succeeded(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(complete("aion wind").trim(), "windows");
    let shards = complete("aion shards ''");
    assert!(
        shards.contains("run") && shards.contains("compact"),
        "{shards}"
    );
}
