//! `levee train` and `levee eval` as a user runs them: symbolic links, missing and empty
//! inputs, `--reset`, a missing data dir, "n/a" rates, and a store another process holds.

mod common;
use common::{corpus, text, Dir};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_levee");

fn scratch(name: &str) -> Dir {
    common::scratch("train-cli", name)
}

fn levee(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(BIN).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

#[test]
fn trains_through_symlinked_folders() {
    let d = scratch("symlink");
    let (spam, ham) = corpus(&d.0);
    let linked = d.0.join("linked-spam");
    std::os::unix::fs::symlink(&spam, &linked).unwrap();
    let data = d.0.join("data");
    let o = levee(&[&"train", &"--data", &data, &"--spam", &linked, &"--ham", &ham]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("trained on 2 spam and 1 ham"), "{}", text(&o.stdout));
}

#[test]
fn missing_folder_fails_and_says_so_once() {
    let d = scratch("missing");
    let (_, ham) = corpus(&d.0);
    let nope = d.0.join("no-such-folder");
    let o = levee(&[&"train", &"--data", &d.0.join("data"), &"--spam", &nope, &"--ham", &ham]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(err.matches("no-such-folder").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn empty_folder_fails() {
    let d = scratch("empty");
    let (_, ham) = corpus(&d.0);
    let empty = d.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = levee(&[&"train", &"--data", &d.0.join("data"), &"--spam", &empty, &"--ham", &ham]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no message found"), "{}", text(&o.stderr));
}

#[test]
fn reset_does_not_double_the_counts() {
    let d = scratch("reset");
    let (spam, ham) = corpus(&d.0);
    let data = d.0.join("data");
    let run = |reset: bool| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham];
        if reset {
            args.push(&"--reset");
        }
        let o = levee(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert!(run(false).contains("knows 2 spam, 1 ham"));
    assert!(run(false).contains("knows 4 spam, 2 ham"));
    assert!(run(true).contains("knows 2 spam, 1 ham"));
}

#[test]
fn eval_refuses_a_missing_data_dir() {
    let d = scratch("eval-missing");
    std::fs::write(d.0.join("m.tsv"), "a.eml\tham\tx\n").unwrap();
    let data = d.0.join("no-model");
    let o = levee(&[&"eval", &"--data", &data, &"--manifest", &d.0.join("m.tsv")]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no trained model"), "{}", text(&o.stderr));
    assert!(!data.exists(), "eval must not create a store");
}

#[test]
fn eval_prints_na_and_ends_with_a_newline() {
    let d = scratch("eval-na");
    let (spam, ham) = corpus(&d.0);
    let data = d.0.join("data");
    assert!(levee(&[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham])
        .status
        .success());
    std::fs::write(d.0.join("m.tsv"), "ham/3.eml\tham\thamonly\nspam/1.eml\tspam\tspamonly\n")
        .unwrap();
    let o = levee(&[&"eval", &"--data", &data, &"--manifest", &d.0.join("m.tsv")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.ends_with('\n'), "{out:?}");
    let row = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or("").to_owned();
    // No spam: no caught rate. No ham: no false-positive rate.
    assert_eq!(row("hamonly").split_whitespace().nth(2), Some("n/a"), "{out}");
    assert_eq!(row("spamonly").split_whitespace().nth(4), Some("n/a"), "{out}");
}

#[test]
fn eval_fails_on_an_empty_or_missing_manifest() {
    let d = scratch("eval-empty");
    let (spam, ham) = corpus(&d.0);
    let data = d.0.join("data");
    assert!(levee(&[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham])
        .status
        .success());
    std::fs::write(d.0.join("m.tsv"), "path\tlabel\tsource\n").unwrap();
    let o = levee(&[&"eval", &"--data", &data, &"--manifest", &d.0.join("m.tsv")]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no message listed"), "{}", text(&o.stderr));
    let o = levee(&[&"eval", &"--data", &data, &"--manifest", &d.0.join("nope.tsv")]);
    assert!(!o.status.success());
    assert_eq!(text(&o.stderr).matches("nope.tsv").count(), 1, "{}", text(&o.stderr));
}

#[test]
fn a_store_held_without_a_control_socket_is_named_not_a_sled_error() {
    let d = scratch("locked");
    let (spam, ham) = corpus(&d.0);
    let data = d.0.join("data");
    // What an engine holds while it starts, before its control socket listens.
    let store = levee_store::Store::open(&data.join("db")).unwrap();
    let o = levee(&[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham]);
    drop(store);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("in use by another process and no engine answers"), "{err}");
    assert!(!err.contains("WouldBlock") && !err.contains("os error"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn long_runs_show_progress_on_stderr_and_mbox_and_maildir_are_read() {
    let d = scratch("progress");
    let spam = d.0.join("spam.mbox");
    let mut mbox = String::new();
    for i in 0..520 {
        mbox += &format!(
            "From x@y Mon Jan  1 00:00:00 2024\nSubject: offer {i}\n\ncheap pills {i}\n\n"
        );
    }
    std::fs::write(&spam, mbox).unwrap();
    let ham = d.0.join("Maildir");
    std::fs::create_dir_all(ham.join("cur")).unwrap();
    std::fs::create_dir_all(ham.join("tmp")).unwrap();
    std::fs::write(ham.join("cur/1:2,S"), "Subject: agenda\n\nmeeting\n").unwrap();
    std::fs::write(ham.join("tmp/2"), "Subject: half written\n").unwrap();
    let o = levee(&[&"train", &"--data", &d.0.join("data"), &"--spam", &spam, &"--ham", &ham]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("trained 500/521"), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("trained on 520 spam and 1 ham"), "{}", text(&o.stdout));
    // The stock rules (spamassassin package) judged the mail, and their weights were fitted.
    assert!(text(&o.stdout).contains("fitted the weights of"), "{}", text(&o.stdout));
}
