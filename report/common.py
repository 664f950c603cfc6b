"""What every section shares: the number formats, the records sorted by question (Study), and
the sentences that name a run's settings.

A section with prose first gathers its numbers from the records (its *_facts functions:
plain numbers and names, nothing formatted), then renders them with the formats here, so the
text and the tables agree.
"""
from __future__ import annotations

from pathlib import Path

import plot_results as pr
import plots.speed as ps
import results
from report.formats import f_band, mib, pct_change
from speed import readings
from study import noise, registry

ROOT = Path(__file__).resolve().parents[1]          # the repository

# The main body's numbered sections, in print order: the text cites them by key, never by a typed number.
MAIN_SECTIONS = ("measure", "part1", "part2", "explore", "bonus", "speed", "choose", "limits", "conclusions")


def heading_number(key: str) -> str:
    """'section N' for a main section's key."""
    return f"section {MAIN_SECTIONS.index(key) + 1}"


def heading(key: str, title: str) -> str:
    """'N. title': a main section's heading."""
    return f"{MAIN_SECTIONS.index(key) + 1}. {title}"


# -----------------------------------------------------------------------------
# Reading: which results answer which question


def method(rec: dict) -> str:
    return rec["method"]["name"]


def model_label(rec: dict) -> str:
    return pr.short_model(rec) + (" (stand-in)" if rec["model"].get("stand_in") else "")


def group_label(key: tuple) -> str:
    model, text, L, S, n, dev, _ = key
    return f"{model} · {pr.text_words(text, short=True)} · L={L} S={S} · {n:,} tokens · {dev}"


def short_group(key: tuple) -> str:
    """A group's tokens and device, for a clause: '16,383 tokens, CPU' or '301,947 tokens, NVIDIA H200'."""
    return f"{key[4]:,} tokens, " + ("CPU" if key[6] == "cpu" else key[5])


class Study:
    """The results files, sorted into what each section needs."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.groups = {k: pr.ordered(v) for k, v in sorted(pr.eval_groups(records).items())}
        by_kind = {k: [r for r in records if results.kind_of(r) == k] for k in results.KINDS}
        self.size_rows = readings.size_rows(by_kind["bench"])
        # those with the weights-in-L2 diagnostic for fp16 and INT8: what the size paragraph reads
        self.size_l2_rows = [r for r in self.size_rows if r["fp16_bytes_share"] is not None
                             and r["scratch-int8-fast"] and r["scratch-int8-fast"]["l2_vs_fp16_l2"] is not None]
        # a bench in the comparison across model sizes whose model nothing else measures (GPT-2's
        # larger sizes, cuda-sizes) is shown there only, not in a section of its own
        studied = {pr.short_model(r) for r in records if results.kind_of(r) not in ("bench", "anatomy")
                   and r.get("model")}
        sized = {r["file"] for r in self.size_rows} if len(self.size_rows) >= 2 else set()
        self.benches = [r for r in by_kind["bench"] if r.get("_file") not in sized or pr.short_model(r) in studied]
        self.anatomies = ps.anatomy_records(by_kind["anatomy"])         # fewest links first
        self.headline = self.headline_group()
        # the scan of the headline model where there is one (one scan a report: the Part 1 section's)
        self.sensitivity = next((r for r in by_kind["sensitivity"] if self.headline is not None
                                 and pr.short_model(r) == self.headline[0]), next(iter(by_kind["sensitivity"]), None))
        self.compare = next(iter(by_kind["compare"]), None)
        self.inspection = next(iter(by_kind["gguf-inspect"]), None)
        self.pushes = by_kind["gguf-push"]

    def ppl_groups(self) -> list[tuple]:
        """Groups of two runs or more whose perplexity means something, most tokens first."""
        keys = [
            k
            for k, rs in self.groups.items()
            if len(rs) >= 2 and pr.perplexity_means_something(rs[0])
        ]
        return sorted(keys, key=lambda k: (-k[4], -len(self.groups[k])))

    def other_model_group(self, model: str, names, at_least: int = 2) -> tuple | None:
        """Another model's group of ppl_groups() with an fp32 baseline and the most of `names` (at least
        `at_least` of them), or None: where a finding on one model is checked on the other."""
        count = lambda k: sum(n in self.runs(k) for n in names)                   # noqa: E731
        keys = [k for k in self.ppl_groups() if k[0] != model and count(k) >= at_least
                and "baseline-fp32" in self.runs(k)]
        return max(keys, key=count, default=None)

    def memory_groups(self) -> list[tuple]:
        return [k for k, rs in self.groups.items() if len(rs) >= 2]

    def find_group(self, *names: str) -> tuple | None:
        """The best perplexity group that holds every one of these methods, with a fp32 baseline."""
        for k in self.ppl_groups():
            have = {method(r) for r in self.groups[k]}
            if "baseline-fp32" in have and all(n in have for n in names):
                return k
        return None

    def runs(self, key: tuple) -> dict[str, dict]:
        return {method(r): r for r in self.groups[key]}

    def headline_group(self) -> tuple | None:
        """The group the summary shows: a real LM's runs with a fp32 baseline, the most tokens,
        then the most methods."""
        keys = [k for k in self.ppl_groups() if "baseline-fp32" in {method(r) for r in self.groups[k]}]
        return max(keys, key=lambda k: (k[4], len(self.groups[k])), default=None)

    def headline_bench(self, name: str) -> dict | None:
        """A bench of this kind on the headline group's model and device, or None."""
        g = self.headline
        return None if g is None else next(
            (r for r in self.benches if method(r) == name and pr.short_model(r) == g[0]
             and pr.device_of(r) == g[5]), None)

    def bench(self, name: str, device: str) -> dict | None:
        return next(
            (r for r in self.benches if method(r) == name and pr.device_kind(r) == device), None
        )


def bandwidth(s: "Study", device: str = "cuda") -> float | None:
    """The memory bandwidth (bytes/s) of the GPU that the benches ran on, or None."""
    for b in s.benches:
        bw = readings.bench_bandwidth(b) if pr.device_kind(b) == device else None
        if bw:
            return bw
    return None


def full_precision_mib(rec: dict) -> float | None:
    """MiB a run kept in full precision (embeddings, norms, ...), from its quantization block."""
    return mib((rec.get("quantization") or {}).get("full_precision"))


def delta(runs: dict[str, dict], name: str, base: str = "baseline-fp32") -> float:
    return pct_change(runs[name]["perplexity"]["ppl"], runs[base]["perplexity"]["ppl"])


def band(runs: dict[str, dict], name: str, base: str = "baseline-fp32") -> tuple[float, float] | None:
    """The 95% band of delta(runs, name, base), from a paired bootstrap over the windows (study.noise);
    None where a record predates the windows it needs."""
    return noise.change_band(runs[base], runs[name])


def noise_said(r: dict[str, dict], name: str, base: str, what: str = "the difference") -> str:
    """', a tie: the 95% band of {what}, [..]%, holds zero' or ', beyond the noise: the 95% band of
    {what} is [..]%' for name's perplexity against base's, from the paired bootstrap over their
    windows; '' where a record kept none."""
    b = band(r, name, base)
    if b is None:
        return ""
    return (f", a tie: the 95% band of {what}, {f_band(b)}%, holds zero" if b[0] <= 0 <= b[1]
            else f", beyond the noise: the 95% band of {what} is {f_band(b)}%")


BAND_NOTE = ("95% band: of the change against fp32, from a paired bootstrap over the windows (2,000 draws); "
             "a difference whose band holds zero is a tie.")


def tie(runs: dict[str, dict], a: str, b: str) -> bool | None:
    """Whether a and b tie (the band of b against a holds zero); None where it cannot be said."""
    r = noise.ranked(runs[a], runs[b])
    return None if r is None else r["tie"]


# -----------------------------------------------------------------------------
# Sections. Each reads the Study and writes text whose numbers it computes.

def describe(rec: dict) -> str:
    """A method in words: its registry identity's one-line description, and a calibrated run's variant
    as its settings record it (act-order; a calibration text other than the default)."""
    words = registry.of(rec)["description"]
    st = (rec.get("method") or {}).get("settings") or {}
    if st.get("variant"):
        if st.get("act_order"):
            words += ", act-order (the columns with the largest Hessian diagonal first)"
        cal = st.get("calibration") or {}
        if str(st["variant"]).startswith("cal-") and cal.get("source"):
            words += f", calibrated on {cal['source']}" + (f" ({cal['description']})" if cal.get("description") else "")
    return words


def gemv_ratios(a: dict, name: str) -> tuple[list, list]:
    """A block's GEMV links (by position), each with the time it adds to name's step against
    fp16's: ([(label, ratio)] at most 1, [(label, ratio)] above 1)."""
    mine, base = (readings.block_links(a["steps"][n]["links"])[0] for n in (name, "fp16"))
    ratios = [(label, m["adds_us"] / b["adds_us"]) for label, m, b in zip(ps.LINK_LABELS, mine, base)
              if label.endswith("GEMV")]
    return [r for r in ratios if r[1] <= 1], [r for r in ratios if r[1] > 1]
