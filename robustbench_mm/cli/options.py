"""Options shared by the commands (help texts in one place) and the CellSpec they build."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

Model = Annotated[str, typer.Option("--model", help="Registered name (`mmrobust list models`), family alias (clip, "
                                    "llava, blip2: the real model if cached, else the bundled tiny one), a local "
                                    "directory or a Hugging Face id owner/name (hf-hub:owner/name for open_clip).")]
AttackOpt = Annotated[str, typer.Option("--attack", help="Attack preset name (`mmrobust list attacks`) or YAML path; "
                                        "'none' = clean accuracy only.")]
DefenseOpt = Annotated[str, typer.Option("--defense", help="Defense preset name (`mmrobust list defenses`) or YAML "
                                         "path; 'none' = undefended.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task preset (`mmrobust list tasks`); default: "
                                                "fmnist-zeroshot for CLIP, fmnist-vqa for LLaVA/BLIP-2.")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Budget in [0,1] pixel units, e.g. 4/255; default: the "
                                               "attack preset's (pgd: 8/255).")]
NormOpt = Annotated[Optional[str], typer.Option("--norm", help="linf or l2; default: the attack preset's (pgd: linf).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Attack iterations; default: the attack preset's "
                                                 "(pgd: 10).")]
NOpt = Annotated[Optional[int], typer.Option("--n", help="Number of evaluation samples, drawn with --seed from the "
                                             "task's split.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the sample choice and the attack's randomness.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Samples attacked together (does not change results; "
                                       "halved automatically on out-of-memory).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N; default: cuda if available, "
                                                  "else cpu.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Attack search precision, fp32 or bf16; verdicts are always "
                                       "fp32 (see --load-dtype for the weights).")]
LoadDtypeOpt = Annotated[str, typer.Option("--load-dtype", help="Precision the weights load in: fp32, fp16 or bf16 "
                                           "(recorded with the cell; not fp32 changes the cell id).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit of a Hugging Face "
                                                    "id; default: main as cached (the resolved commit is recorded).")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="'auto': let accelerate spread a large "
                                                     "model (7B+) over the GPUs and CPU; default: whole model on "
                                                     "--device.")]
OutOpt = Annotated[str, typer.Option("--out", help="Result store directory (created if new).")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle checkpoints (.bin/.pt): runs code.")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow Hugging Face remote code.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the vision path and LM for the attack loop.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="i/k: evaluate only shard i of k of every cell "
                                               "(its batches j with j % k = i-1); give each shard its own --out "
                                               "and combine them with `mmrobust merge`. Results equal one whole "
                                               "run at the same --batch-size.")]
VisionEncoderOpt = Annotated[Optional[str], typer.Option("--vision-encoder", help="LLaVA / BLIP-2 only: a CLIP image "
                                                        "encoder in place of the vision tower (same width and grid): "
                                                        "a zoo encoder (fare-clip-tiny, tecoa-clip-tiny, ...), a "
                                                        "public preset (fare2-vit-l-14, tecoa4-vit-l-14, ...), a local "
                                                        "directory, a Hugging Face id or hf-hub:owner/name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON instead of a table.")]


def parse_eps(raw: Optional[str]) -> Optional[float]:
    if raw is None:
        return None
    from robustbench_mm.presets import parse_number

    return parse_number(raw, "--eps")


def cell_spec(model: str, attack: str, defense: str, task: Optional[str], **kw: Any) -> Any:
    from robustbench_mm.runner.resolve import CellSpec

    kw["eps"] = parse_eps(kw.get("eps"))
    return CellSpec(model=model, attack=attack, defense=defense, task=task, **kw)
