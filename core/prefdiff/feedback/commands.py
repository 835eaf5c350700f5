"""The command-line side of `prefdiff label` and `prefdiff reward-model` (light: no torch at import)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `prefdiff label`."""
    parser.add_argument("folder", help="sample folder: conds/NAME.safetensors and samples/NAME_J.safetensors")
    parser.add_argument("--pairs", default=None, help="pair file answers go to (default FOLDER/pairs.jsonl)")
    parser.add_argument("--labeler", default=None,
                        help="default labeler name on the page (default: $USER); each page may set ?labeler=")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765,
                        help="port to listen on (default 8765; 0: a free one, printed in the address)")
    parser.add_argument("--labels-per-pair", type=int, default=2,
                        help="labelers asked per pair, and the most answers a pair takes; 2 or more "
                             "measures agreement (default 2)")
    parser.add_argument("--instructions", default=None, metavar="FILE",
                        help="a Markdown file shown above each pair: what to judge by (paragraphs, "
                             "**bold**, *italic*, `code`, '- ' lists)")
    parser.add_argument("--reward", default=None,
                        help="rank pairs by this reward's uncertainty (closest scores first), e.g. "
                             "preference_model with --reward-option path=DIR")
    parser.add_argument("--reward-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dataset", default=None,
                        help="registered dataset: its plugin draws the conditions; with --model, gives them")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model", default=None, help="a saved model folder to draw samples from on demand")
    parser.add_argument("--lora", default=None, help="a LoRA adapter folder to apply to --model")
    parser.add_argument("--conditioner", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--per-condition", type=int, default=2, help="samples drawn per condition (--model)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps when drawing (--model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement", action="store_true",
                        help="print agreement between labelers on shared pairs and exit")


def label(args: argparse.Namespace) -> int:
    """Run `prefdiff label`: serve the page until interrupted, or print agreement (--agreement)."""
    if args.agreement:
        from prefdiff.data import read_pairs
        from prefdiff.feedback.agreement import agreement, format_agreement

        pair_file = Path(args.pairs) if args.pairs else Path(args.folder) / "pairs.jsonl"
        print(format_agreement(agreement(read_pairs(pair_file))))
        return 0
    from prefdiff.feedback.server import serve

    return serve(args)


def add_reward_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `prefdiff reward-model train`."""
    parser.add_argument("pairs", help="a pair file (from `prefdiff label`, or mined)")
    parser.add_argument("--out", required=True, help="folder to write the model to")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--held-out", type=float, default=0.2, help="fraction of pairs held out for accuracy")
    parser.add_argument("--width", type=int, default=16, help="channels of the CNN's first layer")
    parser.add_argument("--seed", type=int, default=0)


def reward_model(args: argparse.Namespace) -> int:
    """Run `prefdiff reward-model train`."""
    from prefdiff.feedback.training import train_reward_model

    report = train_reward_model(args.pairs, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                held_out=args.held_out, width=args.width, seed=args.seed)
    train = report["train"]
    print(f"trained {report['epochs']} epochs on {report['train_labels']} of {report['labels']} labels: "
          f"train pair accuracy {train['accuracy']:.3f}, loss {train['loss']:.4f}")
    held = report.get("held_out")
    if held:
        low, high = held["accuracy_ci95"]
        print(f"held-out pair accuracy {held['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}, "
              f"{held['decided_pairs']} decided pairs)")
    print(f"the whole report: {Path(args.out) / 'config.json'} (metrics)")
    print(f"reward model: {args.out} (use it as --model.reward preference_model "
          f"--model.reward_options '{{path: {args.out}}}')")
    return 0
