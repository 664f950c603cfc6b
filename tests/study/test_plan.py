"""study/plan.py: run_study.py and scripts/standin_study.py run the same runs."""
import sys
from pathlib import Path

from study import plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import standin_study  # noqa: E402


def test_both_studies_take_their_runs_from_the_one_plan():
    ours = [(label, kw) for step, label, kw in plan.study_runs(["part1"])]
    assert ours == list(plan.PART1)
    for machine, step in (("cpu", "cpu-smol"), ("cuda", "cuda-smol")):
        part1 = [(label, extra) for label, _, script, extra in standin_study.steps_for(machine)[step]
                 if script == "part1" and "sensitivity" not in extra]
        assert [label for label, _ in part1] == [label for label, _ in plan.PART1]
        assert all(set(kw.items()) <= set(extra.items()) for (_, kw), (_, extra) in zip(plan.PART1, part1))
    gguf = standin_study.steps_for("cpu")["cpu-gguf"][0][3]["types"].split(",")
    assert gguf == list(plan.GGUF_TYPES) == [kw["types"] for _, _, kw in plan.study_runs(["gguf"])]
    assert standin_study.CPU_PREFIX == plan.CPU_TOKEN_BUDGET
