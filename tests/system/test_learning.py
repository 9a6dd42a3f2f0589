"""Safe learning end to end: `levee train` keeps a validation sample, and the engine says whether
it can validate learning. Without a sample, votes shape only their voters' verdicts and the log
says so at start; with one, it does not.

Needs: the binary only (no peers: the engine is started and stopped, no mail is sent).
"""

from __future__ import annotations

import subprocess

from harness import LEVEE_BIN

NO_SAMPLE = "no held-back sample"


def write_corpus(root, n):
    spam, ham = root / "spam", root / "ham"
    spam.mkdir(parents=True)
    ham.mkdir(parents=True)
    for i in range(n):
        (spam / f"{i:04}.eml").write_text(
            f"From: winner{i}@lottery.example\r\nSubject: claim your prize {i}\r\n\r\n"
            f"cheap pills winner prize jackpot casino offer{i % 9}\r\n")
        (ham / f"{i:04}.eml").write_text(
            f"From: colleague{i}@work.example\r\nSubject: minutes {i}\r\n\r\n"
            f"meeting agenda minutes budget review schedule item{i % 9}\r\n")
    return spam, ham


def test_train_keeps_a_sample_and_the_engine_uses_it(levee_factory, tmp_path):
    domains = [{"name": "example.test", "downstream": "127.0.0.1:9"}]
    untrained = levee_factory(domains, name="untrained")
    assert NO_SAMPLE in untrained.log_path.read_text(errors="replace")
    untrained.terminate()

    trained = levee_factory(domains, start=False, name="trained")
    spam, ham = write_corpus(tmp_path / "corpus", 250)
    out = subprocess.run([LEVEE_BIN, "train", "--data", str(trained.data_dir), "--spam", str(spam),
                          "--ham", str(ham)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kept 250 spam and 250 ham to validate learning on" in out.stdout, out.stdout
    trained.start()
    log = trained.log_path.read_text(errors="replace")
    assert NO_SAMPLE not in log, log
    assert "Bayes model loaded" in log
