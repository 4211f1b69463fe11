"""``vidfuse extract-text CAPTIONS --out DIR``: caption features and vocabularies."""

from __future__ import annotations

import argparse

from vidfuse.commands.common import add_config_args, add_device_arg, comma_list, no_new_folder_if_refused


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Encode every caption of CAPTIONS (LAFF text, MSR-VTT JSON, CSV or JSONL) into "
            "OUT/text/<encoder>/. Use the same --config as `vidfuse extract`, so text and video "
            "CLIP features come from the same weights."
        ),
    )
    p.add_argument("captions", metavar="CAPTIONS", help="caption file")
    p.add_argument("--out", required=True, help="the features folder (the one `vidfuse extract` wrote)")
    p.add_argument("--encoders", type=comma_list, default=None, help="clip,bow,w2v (default: text.encoders of the config)")
    p.add_argument("--splits", default=None, help="folder of train/val/test.txt (default: beside CAPTIONS)")
    p.add_argument("--format", dest="formats", type=comma_list, default=None, help="parquet,hdf5")
    add_config_args(p, "extract", "default")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (redirected output never gets them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from pipeline.config import ExtractConfig, check_extract_config
    from pipeline.text_job import run_text_extraction
    from vidfuse.config import load_config

    config = load_config(ExtractConfig, args.config, args.overrides, kind="extract", check=check_extract_config)
    with no_new_folder_if_refused(args.out, os.path.join(args.out, "text")):
        written = run_text_extraction(
            args.captions, args.out, config, args.encoders, args.splits, args.formats, args.device,
            progress=not args.no_progress,
        )
    print("extract-text: " + ", ".join(f"text/{n}: {k} captions written" for n, k in written.items()))
    return 0
