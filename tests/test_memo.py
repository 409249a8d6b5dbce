import pytest

from metarec_lib.models.memo import TrainingMemo


def test_least_recently_used_goes_first():
    memo = TrainingMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # a is now the most recent
    memo.put("c", 3)  # evicts b
    assert "b" not in memo and memo.get("b") is None
    assert (memo.get("a"), memo.get("c"), len(memo)) == (1, 3, 2)
    memo.put("a", 4)  # replacing refreshes, never grows
    assert len(memo) == 2 and memo.get("a") == 4
    memo.clear()
    assert len(memo) == 0
    with pytest.raises(ValueError, match="size=0"):
        TrainingMemo(0)
