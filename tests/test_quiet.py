"""Lightning's chatter goes to the log file, even when Lightning is first imported inside the block."""

import subprocess
import sys


def test_a_fresh_process_prints_no_lightning_lines(tmp_path):
    log = tmp_path / "run.log"
    code = ("from prefdiff.quiet import lightning_chatter_to\n"
            f"with lightning_chatter_to({str(log)!r}):\n"
            "    import pytorch_lightning as pl\n"
            "    pl.Trainer(accelerator='cpu', logger=False, enable_progress_bar=False, max_steps=1)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    assert "GPU available" not in out.stdout + out.stderr
    assert "GPU available" in log.read_text()


def test_the_file_holds_prefdiffs_progress_lines_in_a_library_call_too(tmp_path):
    # No command set the logger up (a library user, or one test file run alone): the file still
    # gets prefdiff's INFO lines, the terminal does not, and the level is put back after.
    log = tmp_path / "run.log"
    code = ("import logging\n"
            "from prefdiff.quiet import lightning_chatter_to\n"
            f"with lightning_chatter_to({str(log)!r}):\n"
            "    logging.getLogger('prefdiff.bench').info('aligning with dpo')\n"
            "print(logging.getLogger('prefdiff').level)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    assert "aligning with dpo" in log.read_text()
    assert "aligning with dpo" not in out.stdout + out.stderr
    assert out.stdout.strip() == str(0)  # logging.NOTSET, as before the block


def test_the_command_lines_console_prints_progress_on_stdout_and_warnings_on_stderr(capsys):
    import logging

    from prefdiff.quiet import show_progress_lines

    show_progress_lines()
    logging.getLogger("prefdiff.bench").info("aligning with dpo")
    logging.getLogger("prefdiff.models").warning("prompt 'a' is longer than the tokenizer's limit")
    out, err = capsys.readouterr()
    assert out == "aligning with dpo\n"
    assert err == "prefdiff: warning: prompt 'a' is longer than the tokenizer's limit\n"
