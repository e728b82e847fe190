"""What the fragmentation figures mean: the definition of a fragmented file, and which part
of the sample (uniform draw, largest files) each figure may come from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.collect import fragwalk
from agent.collect.fiemap import FragmentCount
from agent.collect.fragwalk import Candidate, Mapped, Strata, is_fragmented, stratum_weights, summarise

MIB = 1 << 20


def _count(fragments: int, mapped_bytes: int) -> FragmentCount:
    return FragmentCount(fragments, fragments, mapped_bytes, 0, 0, 0, 0)


def test_a_large_file_in_a_few_big_pieces_is_not_fragmented() -> None:
    assert not is_fragmented(98_000_000, _count(2, 98_000_000))  # the healthy VM's case
    assert not is_fragmented(1 << 30, _count(9, 1 << 30))  # 114 MiB pieces, one more than ideal
    assert not is_fragmented(1 << 30, _count(8, 1 << 30))  # ideal: 128 MiB each


def test_small_pieces_beyond_the_ideal_are_fragmented() -> None:
    assert is_fragmented(300 << 10, _count(2, 300 << 10))
    assert is_fragmented(200 * MIB, _count(400, 200 * MIB))
    assert not is_fragmented(300 << 10, _count(1, 300 << 10))  # one piece, however small


# A population of files: (size, fragments); every file's data fully mapped.
files = st.lists(st.tuples(st.integers(64 << 10, 4 << 30), st.integers(1, 5000)), min_size=1, max_size=60)


def _population(pop: list[tuple[int, int]], n_large: int) -> tuple[list[Candidate], set[int]]:
    cands = [Candidate(size, f"/f{i}", i) for i, (size, _) in enumerate(pop)]
    largest = {c.ino for c in sorted(cands, reverse=True)[:n_large]}
    return cands, largest


def _mapped(pop: list[tuple[int, int]], cands: list[Candidate], largest: set[int], uniform: set[int]) -> list[Mapped]:
    return [
        Mapped(c, _count(pop[c.ino][1], c.size), c.ino in uniform, c.ino in largest)
        for c in cands
        if c.ino in uniform or c.ino in largest
    ]


def _true_byte_share(pop: list[tuple[int, int]]) -> float:
    frag = sum(size for size, n in pop if is_fragmented(size, _count(n, size)))
    return 100.0 * frag / sum(size for size, _ in pop)


@given(files, st.integers(0, 20))
def test_on_a_census_the_byte_share_is_the_filesystems(pop: list[tuple[int, int]], n_large: int) -> None:
    """Everything eligible mapped (a small filesystem): every weight is 1, the figure exact."""
    cands, largest = _population(pop, n_large)
    mapped = _mapped(pop, cands, largest, {c.ino for c in cands})
    out, notes = summarise(mapped, Strata(len(largest), len(pop) - len(largest)))
    assert notes == []
    assert abs(out["pct_bytes_in_fragmented"] - _true_byte_share(pop)) < 1e-6


@given(files, st.integers(0, 20), st.data())
def test_every_eligible_file_is_stood_for_once(pop: list[tuple[int, int]], n_large: int, data: st.DataObject) -> None:
    cands, largest = _population(pop, n_large)
    uniform = set(data.draw(st.lists(st.sampled_from([c.ino for c in cands]), min_size=1, unique=True)))
    weighted = stratum_weights(_mapped(pop, cands, largest, uniform), Strata(len(largest), len(pop) - len(largest)))
    if any(c.ino not in largest for c in cands) and not (uniform - largest):
        assert weighted is None  # the rest of the files has no representative: no estimate
        return
    assert weighted is not None
    assert abs(sum(w for _, w in weighted) - len(pop)) < 1e-6


@given(files, st.lists(st.tuples(st.integers(64 << 10, 4 << 30), st.integers(1, 5000)), min_size=1, max_size=10))
def test_the_largest_files_never_move_the_per_file_figures(
    uniform_pop: list[tuple[int, int]], extra: list[tuple[int, int]]
) -> None:
    """Files the sample holds only because they are large leave the per-file figures alone."""
    pop = uniform_pop + extra
    cands, _ = _population(pop, 0)
    uniform = {c.ino for c in cands[: len(uniform_pop)]}
    strata = Strata(len(extra), len(uniform_pop))
    alone, _ = summarise(_mapped(pop, cands, set(), uniform), strata)
    both, _ = summarise(_mapped(pop, cands, {c.ino for c in cands[len(uniform_pop) :]}, uniform), strata)
    for key in ("pct_files_fragmented", "fragments_mean", "fragments_p50", "fragments_p95", "histogram"):
        assert both[key] == alone[key], key
    assert both["fragments_max"] == max(n for _, n in pop)  # ...while max and worst see them


def test_the_byte_share_counts_the_largest_files_at_their_true_weight() -> None:
    """One huge fragmented file among many small whole ones: its bytes count once, not as if
    every file were like the ones drawn with it."""
    small = [Mapped(Candidate(100_000, f"/s{i}", i), _count(1, 100_000), True, False) for i in range(10)]
    huge = Mapped(Candidate(50 * MIB, "/db", 99), _count(500, 50 * MIB), False, True)
    out, _ = summarise([*small, huge], Strata(largest=1, rest=1000))  # 10 of 1,000 small files drawn
    assert abs(out["pct_bytes_in_fragmented"] - 100.0 * 50 * MIB / (50 * MIB + 1000 * 100_000)) < 1e-9
    assert out["pct_files_fragmented"] == 0.0 and out["fragments_max"] == 500
    assert [w["path"] for w in out["worst"]] == ["/db"]


def test_without_a_uniform_file_there_are_no_filesystem_figures() -> None:
    """FIEMAP ran out of time after the largest files only: say so, do not report them as typical."""
    big = [Mapped(Candidate(50 * MIB, f"/b{i}", i), _count(2, 50 * MIB), False, True) for i in range(3)]
    out, notes = summarise(big, Strata(largest=3, rest=500))
    assert "pct_files_fragmented" not in out and "pct_bytes_in_fragmented" not in out
    assert out["fragments_max"] == 2 and len(notes) == 2
    assert fragwalk.FRAGMENTED_EXTENT_BYTES == MIB  # the line the proto comment and the rules cite
