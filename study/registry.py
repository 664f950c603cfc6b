"""The method registry: what each quantization method is, said once, for every writer and reader.

Each entry holds a method's part of the study, its family, its nominal bits per weight, its
grouping, its label and plot colour, and a one-line description. A writer asks the registry
for the method it ran (`identity(key, **params)`), takes the results' method name from it, and
stamps the identity into the record (method.identity); every reader (figures, RESULTS.md, the
report) takes labels, families and descriptions from that stamp, never from parsing a name.

Adding a method is one entry in METHODS plus its code. A few entries take parameters that
their name carries (a group size, a threshold, the blocks of a selective run): the registry
builds that name too, so the name and the identity never disagree.

This module imports nothing but the standard library: readers import it without torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# The families in the order the figures and tables list them, each with its plot colour.
FAMILIES = {"baseline": "#222222", "scratch-int8": "#1f77b4", "scratch-int4": "#2ca02c", "bnb": "#d62728",
            "gguf": "#9467bd", "rtn": "#8c564b", "gptq": "#e377c2", "awq": "#17becf"}
OTHER_COLOR = "#7f7f7f"            # a family not in FAMILIES (none today)


@dataclass(frozen=True)
class Method:
    """One registry entry. bits: nominal bits of a quantized weight (None: a mix, see grouping);
    grouping: what one scale covers."""
    key: str
    part: str                 # baseline, part1, part2, bonus, explore (the exploration directions)
    family: str               # a key of FAMILIES
    bits: float | None
    grouping: str | None
    description: str


def _part1(bits: int, scheme: str, grouping: str, description: str) -> Method:
    """part1_quantize_scratch.py's schemes: scratch-int8-<scheme> and scratch-int4-<scheme>."""
    return Method(f"scratch-int{bits}-{scheme}", "part1", f"scratch-int{bits}", bits, grouping, description)


def _bnb(mode: str, bits: int, grouping: str, description: str) -> Method:
    """part2_bnb_nf4.py's bitsandbytes modes: bnb-<mode>."""
    return Method(f"bnb-{mode}", "part2", "bnb", bits, grouping, description)


# The GGML type a llama.cpp mix is named for: Q5_K_M promises Q5_K (with some tensors in Q6_K).
GGUF_NOMINAL_TYPE = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q3_K_M": "Q3_K"}


def nominal_type_share(bytes_by_type: dict, gguf_type: str) -> float:
    """The share of a GGUF file's tensor bytes in the type its name promises (Q5_K for Q5_K_M):
    llama.cpp falls back per tensor where rows are not a multiple of 256."""
    total = sum(bytes_by_type.values())
    return bytes_by_type.get(GGUF_NOMINAL_TYPE.get(gguf_type, gguf_type), 0) / total if total else 0.0


def _gguf(gtype: str, bits: float | None, grouping: str, description: str) -> Method:
    return Method(f"gguf-{gtype.lower()}", "bonus", "gguf", bits, grouping, description)


def _calibrated(method: str, bits: int, description: str) -> Method:
    """explore_calibrated.py's methods: one entry per method and code width; the group size is a
    parameter (0: per output channel), and the name carries it."""
    return Method(f"{method}-w{bits}", "explore", method, bits, "{grouping}",
                  f"{description}, {bits}-bit, {{grouping}}")


CALIBRATED_DESCRIPTIONS = {"rtn": "round-to-nearest, min/max with a zero point",
                           "gptq": "GPTQ (Hessian-aware rounding, calibrated)",
                           "awq": "AWQ (activation-aware scales, calibrated)"}

METHODS = {m.key: m for m in (
    Method("baseline-fp32", "baseline", "baseline", 32, None, "float32, as loaded"),
    Method("baseline-fp16", "baseline", "baseline", 16, None, "float16 cast"),
    Method("baseline-bf16", "baseline", "baseline", 16, None, "bfloat16 cast"),
    _part1(8, "per_tensor", "per tensor", "Part 1 INT8, symmetric, one scale per weight matrix"),
    _part1(8, "per_channel", "per output channel", "Part 1 INT8, symmetric, one scale per output channel"),
    _part1(8, "asymmetric", "per output channel, with a zero point",
           "Part 1 INT8, scale and zero point per output channel"),
    _part1(8, "group", "per {group_size} inputs of a row",
           "Part 1 INT8, symmetric, one scale per {group_size} inputs of a row"),
    _part1(4, "int4", "absmax per block", "Part 1 4-bit linear int4, absmax per 64"),
    _part1(4, "nf4", "absmax per block", "Part 1 4-bit NF4 codes, absmax per 64"),
    _bnb("int8", 8, "per output channel, outlier columns in fp16",
         "bitsandbytes LLM.int8(), outliers (>{threshold:g}) in fp16"),
    _bnb("fp4", 4, "absmax per 64", "bitsandbytes 4-bit FP4, absmax per 64"),
    _bnb("nf4", 4, "absmax per 64", "bitsandbytes 4-bit NF4, absmax per 64"),
    _bnb("nf4-dq", 4, "absmax per 64, the absmax quantized per 256", "NF4 + double quantization of the absmax"),
    _gguf("F32", 32, "none", "llama.cpp GGUF F32"),
    _gguf("F16", 16, "none", "llama.cpp GGUF F16"),
    _gguf("Q8_0", 8.5, "scale per 32", "llama.cpp GGUF Q8_0"),
    _gguf("Q6_K", 6.5625, "super-blocks of 256", "llama.cpp GGUF Q6_K"),
    _gguf("Q5_K_M", None, "a mix of Q5_K and Q6_K, super-blocks of 256", "llama.cpp GGUF Q5_K_M"),
    _gguf("Q5_0", 5.5, "scale per 32", "llama.cpp GGUF Q5_0"),
    _gguf("Q4_K_M", None, "a mix of Q4_K and Q6_K, super-blocks of 256", "llama.cpp GGUF Q4_K_M"),
    _gguf("Q4_0", 4.5, "scale per 32", "llama.cpp GGUF Q4_0"),
    _gguf("Q3_K_M", None, "a mix of Q3_K, Q4_K and Q5_K, super-blocks of 256", "llama.cpp GGUF Q3_K_M"),
    *(_calibrated(m, b, d) for m, d in CALIBRATED_DESCRIPTIONS.items() for b in (4, 3)),
)}

# The 4-bit formats of Part 2's --compare (its record's compare.kinds), each with the method
# whose storage it rebuilds: a reader takes a format's part of the study from that entry.
COMPARE_KINDS = {"bnb-nf4": "bnb-nf4", "bnb-fp4": "bnb-fp4", "scratch-nf4": "scratch-int4-nf4",
                 "scratch-int4": "scratch-int4-int4"}

BNB_INT8_THRESHOLD = 6.0          # LLM.int8()'s default outlier threshold: its name carries no suffix


class UnknownMethod(KeyError):
    """A method the registry does not hold: add an entry to METHODS."""


def entry(key: str) -> Method:
    try:
        return METHODS[key]
    except KeyError:
        raise UnknownMethod(f"no method '{key}' in study/registry.py's METHODS") from None


def compact(ix: list[int]) -> str:
    """Block indices as a selective run's name writes them: [0, 1, 2, 5] -> '0-2.5'."""
    runs: list[list[int]] = []
    for i in ix:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ".".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def identity(key: str, *, group_size: int | None = None, threshold: float | None = None,
             blocks: list[int] | None = None, components: list[str] | None = None,
             variant: str | None = None) -> dict:
    """The identity a writer stamps into its record (method.identity), with the results'
    method name in it. group_size: scratch-int8-group's, and the calibrated methods' (0: per
    output channel); threshold: bnb-int8's; blocks and components: a selective Part 1 run (only
    those blocks' components quantized); variant: a calibrated run's option that is not the
    default (act-order, another calibration source), appended to the name."""
    m = entry(key)
    calibrated = m.part == "explore"
    params = {"group_size": group_size, "threshold": BNB_INT8_THRESHOLD if threshold is None else threshold,
              "grouping": None}
    if key == "scratch-int8-group" and not group_size:
        raise ValueError("scratch-int8-group takes a group_size")
    if calibrated:
        if group_size is None:
            raise ValueError(f"{key} takes a group_size (0 for per output channel)")
        params["grouping"] = "per output channel" if group_size == 0 else f"per {group_size} inputs of a row"
    elif variant is not None:
        raise ValueError(f"{key} takes no variant")
    name = {"scratch-int8-group": f"scratch-int8-group{group_size}",
            "bnb-int8": "bnb-int8" + ("" if params["threshold"] == BNB_INT8_THRESHOLD
                                      else f"-t{params['threshold']:g}")}.get(key, key)
    if calibrated:
        name += ("-pc" if group_size == 0 else f"-g{group_size}") + (f"-{variant}" if variant else "")
    selective = None
    if blocks is not None:
        selective = {"blocks": compact(blocks), "components": "+".join(components or [])}
        name += f"-b{selective['blocks']}-{selective['components']}"
    out = {**asdict(m), "name": name, "label": f"{m.family} (blocks {selective['blocks']})" if selective else name,
           "color": FAMILIES.get(m.family, OTHER_COLOR), "selective": selective}
    out["grouping"] = m.grouping.format(**params) if m.grouping else None
    out["description"] = ("Part 1 INT8 per channel, only the blocks/components named" if selective
                          else m.description.format(**params))
    return out


# -----------------------------------------------------------------------------
# Reading a record's identity

def of(rec: dict) -> dict:
    """The identity stamped in a record of a method (eval and sensitivity records)."""
    ident = (rec.get("method") or {}).get("identity")
    if not ident:
        raise KeyError(f"{rec.get('_file', 'a record')} has no method.identity (schema 3): "
                       "scripts/upgrade_results.py adds it to older files")
    return ident


def family_rank(rec: dict) -> int:
    """The family's place in FAMILIES' order (the order of figures and tables)."""
    fams = list(FAMILIES)
    fam = of(rec)["family"]
    return fams.index(fam) if fam in fams else len(fams)


def is_baseline(rec: dict) -> bool:
    return of(rec)["part"] == "baseline"


# -----------------------------------------------------------------------------
# Older records: the identity a writer of today would stamp, from the settings they hold

def identity_from_settings(rec: dict) -> dict | None:
    """For a schema-2 eval or sensitivity record: the identity of the method its settings
    describe (never its name), as today's writer of that run stamps it; None for other kinds."""
    if rec.get("kind") not in ("eval", "sensitivity"):
        return None
    s = rec["method"]["settings"]
    if "dtype" in s and s.get("quantized") is False:                        # evaluate.py's baseline
        return identity({"float32": "baseline-fp32", "float16": "baseline-fp16",
                         "bfloat16": "baseline-bf16"}[s["dtype"]])
    if s.get("method") in CALIBRATED_DESCRIPTIONS:                          # explore_calibrated.py
        return identity(f"{s['method']}-w{s['bits']}", group_size=s["group_size"], variant=s.get("variant"))
    if s.get("library") == "llama.cpp":                                     # bonus_gguf.py
        return identity(f"gguf-{s['gguf_type'].lower()}")
    if s.get("library") == "bitsandbytes":                                  # part2_bnb_nf4.py
        return identity(f"bnb-{s['mode']}", threshold=s.get("threshold"))
    if "scheme" in s:                                                        # part1_quantize_scratch.py
        key = f"scratch-int{s['bits']}-{'group' if s['scheme'] == 'group' else s['scheme']}"
        selective = s.get("mode") == "selective" and rec["kind"] == "eval"
        return identity(key, group_size=s.get("group_size") if s["scheme"] == "group" else None,
                        blocks=s["blocks"] if selective else None,
                        components=s["components"] if selective else None)
    raise ValueError(f"{rec.get('_file', 'a record')}: settings name no method the registry knows")
