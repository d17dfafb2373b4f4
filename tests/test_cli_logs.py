"""The console entry point keeps TensorFlow's native log lines off stderr, and nothing else."""
import json
import subprocess

from nucseg.cli.native_logs import drop_tf_lines

TF_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1795318803.326864   13721 port.cc:153] oneDNN custom operations are on.\n"
    b"W0000 00:00:1795318724.588454   13414 op_level_cost_estimator.cc:699] Error in PredictCost\n"
)


def test_tf_lines_dropped_user_lines_and_progress_bars_kept():
    user = b"error: a.png: file not found\nepoch 1:  10%|#  | 1/10\repoch 1:  20%|## | 2/10\r"
    assert drop_tf_lines(TF_LINES + user) == user
    assert drop_tf_lines(b"I0 is not a log line\n") == b"I0 is not a log line\n"


def test_installed_command_keeps_stderr_clean_while_tensorflow_runs(tmp_path):
    done = subprocess.run(["nucseg", "hstain", str(tmp_path / "missing.png"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2                      # an input error before any work
    assert done.stderr.splitlines() == [
        f"error: {tmp_path / 'missing.png'}: no such file or directory"]
    # model summary builds the Keras graph, so TensorFlow's runtime starts and logs natively
    done = subprocess.run(["nucseg", "model", "summary", "--config", "paper", "--backbone",
                           "resnet50", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)
    assert "I0000" not in done.stderr and "absl" not in done.stderr, done.stderr
