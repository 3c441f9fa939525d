"""``mmrobust reproduce robustvlm-llava-coco`` (issue 33): the paper's LLaVA table as data, its cells
swap the vision encoder, and the zoo run maps the public encoders to the zoo's own."""

from __future__ import annotations

from robustbench_mm.report import paper


def test_zoo_plan_swaps_the_zoo_encoders_into_llava_tiny() -> None:
    spec = paper.load("robustvlm-llava-coco")
    pairs = paper.plan(spec, zoo=True, n=4, device="cpu")
    encoders = {c["id"]: cell.spec.vision_encoder for c, cell in pairs}
    assert {encoders[k] for k in ("fare2-cap-2", "fare4-cap-2", "tecoa2-cap-2", "clip-cap-2")} == {
        "fare2-clip-tiny", "fare-clip-tiny", "tecoa2-clip-tiny", None}
    assert all(cell.entry.name == "llava-tiny" for _, cell in pairs)
    assert {cell.task.name for _, cell in pairs} == {"fmnist-caption", "fmnist-vqa"}
    assert len({cell.cell_id for _, cell in pairs}) == len(pairs)


def test_the_papers_cider_is_kept_as_paper_data_on_its_printed_scale() -> None:
    spec = paper.load("robustvlm-llava-coco")
    refs = {(r["cell"], r["metric"]): r["value"] for r in spec.references if r["tag"] == "PAPER"}
    assert refs[("clip-cap-2", "clean_score")] == 115.5 and refs[("clip-cap-2", "adv_score")] == 4.0
    assert refs[("fare2-cap-2", "clean_score")] == 109.9 and refs[("fare4-cap-2", "adv_score")] == 57.1
    assert refs[("tecoa2-cap-2", "clean_score")] == 98.4 and refs[("tecoa2-cap-2", "adv_score")] == 44.2
    # our CIDEr-D is stored raw (1.155 = 115.5 printed); the comparison puts it on the paper's scale
    assert paper._value({"status": "ok", "clean_score": 1.155}, "clean_score") == 115.5


def test_real_run_lists_the_public_encoders_it_lacks() -> None:
    from robustbench_mm.errors import WeightsError
    from robustbench_mm.models.zoo import entry_for

    missing = " ".join(paper.describe(paper.load("robustvlm-llava-coco"))["missing_weights"])
    for repo in ("chs20/fare2-clip", "chs20/fare4-clip", "chs20/tecoa2-clip"):
        try:
            entry_for(f"hf-hub:{repo}")
            cached = True
        except WeightsError:
            cached = False
        assert (repo in missing) == (not cached), repo
