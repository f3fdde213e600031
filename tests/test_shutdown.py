"""Issue 12 (7): ``python app.py`` stopped with SIGTERM, as Spaces stop apps, exits cleanly and
deletes its trace folder, as it does on Ctrl-C."""

from tools.hostile import sigterm_scenario


def test_sigterm_deletes_the_trace_folder_and_exits():
    result = sigterm_scenario(timeout_s=240)
    assert result.started, result.output[-2000:]
    assert result.trace_dirs_before == 1  # the app made its folder inside its Gradio cache
    assert result.exit_code is not None, "the app did not exit within 60 s of SIGTERM"
    assert result.trace_dirs_after == 0, result.output[-2000:]
    assert "Traceback" not in result.output, result.output[-2000:]
