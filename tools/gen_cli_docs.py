"""Regenerate docs/cli.md from the argparse help texts (at 116 columns, as tests/test_cli_reference.py renders them):

    .venv/bin/python tools/gen_cli_docs.py
"""
import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from uniformer.cli import build_parser  # noqa: E402


def command_help(command: str) -> str:
    """``uniformer COMMAND --help`` as the parser prints it at 116 columns."""
    os.environ["COLUMNS"] = "116"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    return out.getvalue().rstrip()


sub = next(a for a in build_parser()._actions if a.dest == "command")
cmds = [""] + list(sub.choices)
out = ["# Command-line reference", "",
       "Every command prints one line `uniformer: error: …` and exits with status 1 on bad input (unknown model — "
       "with close-name suggestions —, missing or unreadable files, mismatched checkpoints). A bad option value is "
       "one line naming the option, the value and what is allowed, with status 2: `uniformer: error: --epochs must be "
       "a positive integer, got 0` (`train` flags and `--config` YAML keys), `uniformer info: error: argument "
       "--input-size: must be a positive multiple of 32, got -64` (argparse, as every usage error). See also [training.md](training.md), [dense.md](dense.md) and [weights.md](weights.md).", ""]
for cmd in cmds:
    out += [f"## `{f'uniformer {cmd}'.strip()}`", "", "```", command_help(cmd), "```", ""]
out += ["## Examples", "", "```",
        "$ uniformer models 'uniformer_xx*'",
        "model          params (M)  GFLOPs  input    checkpoint tags",
        "uniformer_xxs       10.22   1.306  224x224  in1k_224, in1k_128, in1k_160, in1k_192", "",
        "$ uniformer predict --model uniformer_small --checkpoint uniformer_small_in1k.pth cat.jpg dog.png",
        "$ uniformer train --config configs/digits_uniformer_xxs.yaml --output runs/digits",
        "$ uniformer eval --checkpoint runs/digits",
        "$ uniformer plot runs/digits",
        "$ uniformer predict --checkpoint runs/digits photo.png",
        "$ uniformer predict-video --model uniformer_video_small.k400_16x4 --checkpoint uniformer_small_k400_16x4.pth clip.mp4",
        "$ uniformer train --task segmentation --data ~/data/ade --reduce-zero-label --model uniformer_small "
        "--init-checkpoint uniformer_small_in1k.pth --output runs/ade",
        "$ uniformer eval --checkpoint runs/ade --inference slide",
        "$ uniformer predict --checkpoint runs/ade street.jpg          # street_segmentation.png",
        "$ uniformer train --task detection --data ~/data/coco --model uniformer_small --output runs/coco",
        "$ uniformer predict --checkpoint runs/pose people.jpg --box 40 20 120 300",
        "$ uniformer export --model uniformer_small --checkpoint uniformer_small_in1k.pth --output uniformer_small.onnx",
        "$ uniformer export --checkpoint runs/digits --output digits.pt          # TorchScript, format from the suffix",
        "$ uniformer export --checkpoint runs/coco --output coco.onnx            # boxes/labels/scores/masks; coco.onnx.json",
        "$ uniformer predict --checkpoint runs/digits photos/ --output predictions.json   # a folder; .csv also",
        "$ uniformer bench uniformer_small uniformer_xxs --peers --paths baseline,eager,fast,fast-bf16",
        "```", ""]
(ROOT / "docs" / "cli.md").write_text("\n".join(out))
print(f"wrote {ROOT / 'docs' / 'cli.md'}")
