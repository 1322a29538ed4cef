"""train.distributed.shutdown: the group the trainer made is destroyed when the run ends (a gloo rank that
exited with it alive aborted at interpreter exit and failed a finished torchrun run), after a barrier only
when the run ended cleanly, and a group somebody else made is left alone."""

import pytest

from hybridcore.train import distributed


@pytest.mark.parametrize("owned, clean, calls", [(True, True, ["barrier", "destroy"]), (True, False, ["destroy"]),
                                                (False, True, [])])
def test_shutdown_destroys_only_the_group_it_made(monkeypatch, owned, clean, calls):
    seen = []
    monkeypatch.setattr(distributed, "_OWNED", owned)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: seen.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: seen.append("destroy"))
    distributed.shutdown(clean)
    assert seen == calls and distributed._OWNED is False
