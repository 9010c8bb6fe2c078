"""bench/bench_distill_step.py on a tiny model: the plumbing (each student, the report), not the speed."""

import json

import pytest

from bench_scripts import load_bench


@pytest.mark.parametrize("student", ["w2-latents", "w2-scales", "ternary"])
def test_tiny_steps_are_timed_for_each_student(tiny_folder, tmp_path, capsys, student):
    out = tmp_path / "step.json"
    bench = load_bench("bench_distill_step")
    assert bench.main(["--model", str(tiny_folder), "--student", student, "--group", "32", "--batch", "2",
                       "--seqlen", "16", "--steps", "2", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["student"] == student and len(report["step_seconds"]) == 2 and report["tokens_per_step"] == 32
    assert report["tokens_per_second"] > 0 and "SIMD flags: " in capsys.readouterr().out


def test_the_students_train_what_they_say(tiny_folder):
    from tritium.models import load_model

    bench = load_bench("bench_distill_step")
    teacher, _, _ = load_model(tiny_folder)
    _, latents = bench.build_student(teacher, "w2-latents", 32)
    _, scales = bench.build_student(teacher, "w2-scales", 32)
    assert len(latents) == 3 * 14 and len(scales) == 2 * 14  # weight, scale, zero per linear; no weight when frozen
