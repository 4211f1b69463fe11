"""``vidfuse extract VIDEO_DIR --out DIR``: the Beam feature-extraction job."""

from __future__ import annotations

import argparse

from vidfuse.commands.common import add_config_args, add_device_arg, comma_list, no_new_folder_if_refused
from vidfuse.errors import ConfigError


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Decode every video under VIDEO_DIR (recursive) and write feature shards per "
            "extractor into OUT/<extractor>/. Unknown flags are passed to Beam, e.g. "
            "--runner=DataflowRunner --project=... --region=... --temp_location=gs://..."
        ),
    )
    p.add_argument("video_dir", metavar="VIDEO_DIR", help="folder (local or gs://, s3://...) of videos")
    p.add_argument("--out", required=True, help="output folder for the feature sets")
    p.add_argument("--extractors", type=comma_list, default=None, help="e.g. clip,x3d,ircsn (default: all in the config)")
    p.add_argument("--format", dest="formats", type=comma_list, default=None, help="parquet,hdf5 (default: from the config)")
    add_config_args(p, "extract", "default")
    add_device_arg(p)
    p.add_argument("--batch-videos", type=int, default=8, help="videos per model batch (default 8)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any video failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, passes_extra_args=True)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import ExtractConfig, check_extract_config
    from pipeline.extract_job import run_extraction
    from vidfuse.config import load_config

    config = load_config(ExtractConfig, args.config, args.overrides, kind="extract", check=check_extract_config)
    if args.batch_videos < 1:
        raise ConfigError(f"--batch-videos must be >= 1, got {args.batch_videos}")
    with no_new_folder_if_refused(args.out):
        summary = run_extraction(
            args.video_dir,
            args.out,
            config,
            extractors=args.extractors,
            formats=args.formats,
            beam_args=args.extra_args,
            device=args.device,
            batch_videos=args.batch_videos,
            progress=not args.no_progress,
        )
    print(f"extract: {summary.line()}")
    return 1 if (args.strict and summary.failed) else 0
