"""The query encoder of an index, exported to ONNX so that ``vidfuse search`` needs no torch.

Why: a search is a short process, and importing torch alone costs seconds (4.6 s wall on an
idle machine of 2 cores), a thousand times the search itself. When a head reads no CLIP text
feature (its text side is bow, w2v and the learned GRU) and its index score is its own score
(not DLLFA, whose full score re-ranks the hits), everything a query needs is the text encoders
(numpy), the head's text side and FAISS. ``vidfuse index`` then writes that text side beside
the index as ``query_encoder.onnx``, with ``query_encoder.json`` saying what it was exported
from; search runs it with onnxruntime (the optional extra ``onnx``).

The export is an addition, never a condition: an index whose export failed or was skipped, or
whose run changed since, is searched with torch as before.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fusion.dims import check_dims, check_vocab
from fusion.keys import TOKENS
from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)

MODEL_FILE = "query_encoder.onnx"
META_FILE = "query_encoder.json"
FORMAT = 1
RUN_FILES = ("checkpoint.pt", "last.pt", "run.json")  # what the torch path reads of a run
TORCH_ONLY_TEXT = ("clip",)  # text features whose encoder is a torch model (open_clip)


class QueryEncoderError(VidfuseError):
    """``--query-encoder onnx`` asked for, but this index has none that fits its run."""


def not_exportable(head, text_names: Sequence[str]) -> str | None:
    """Why a head's queries would still need torch (so no export is written), or None."""
    if not getattr(head, "exact_index", True):
        return f"the {type(head).__name__} head re-ranks its hits with its full score"
    torch_text = [n for n in text_names if n in TORCH_ONLY_TEXT]
    if torch_text:
        return f"it reads the {', '.join(torch_text)} text feature, whose encoder is a torch model"
    return None


def run_files(run_dir: str) -> dict[str, list[int] | None]:
    """(size, mtime_ns) of each run file the export depends on: a retrained or resumed run changes them."""
    stamps: dict[str, list[int] | None] = {}
    for name in RUN_FILES:
        try:
            st = os.stat(os.path.join(run_dir, name))
            stamps[name] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            stamps[name] = None
    return stamps


def remove(index_dir: str) -> None:
    """Delete an index folder's export, if it has one."""
    for name in (META_FILE, MODEL_FILE):  # the record first: a model without one is never read
        try:
            os.unlink(os.path.join(index_dir, name))
        except FileNotFoundError:
            pass


def write(run, index_dir: str) -> bool:
    """Export ``run``'s text side into ``index_dir`` if its queries can go without torch.

    Returns whether it was written. Any old export is removed first, so the folder never holds
    one that describes another run; a failed export is logged and leaves the index as it is.
    """
    from pipeline.training_set import head_features

    remove(index_dir)
    text_names = head_features(run.config.head)[1]
    why = not_exportable(run.head, text_names)
    if why:  # the usual case (heads that read CLIP text): nothing to tell the user
        log.debug("no torch-free query encoder for this index: %s", why)
        return False
    if importlib.util.find_spec("onnx") is None:  # an optional extra: not having it is no fault
        log.info("no torch-free query encoder for this index: onnx is not installed (pip install 'vidfuse[onnx]')")
        return False
    tmp = os.path.join(index_dir, f".{MODEL_FILE}.tmp-{os.getpid()}")
    try:
        import torch

        from fusion.onnx_export import OPSET, export_query_embedding

        inputs = export_query_embedding(run.head, run.info["text_dims"], tmp)
        os.replace(tmp, os.path.join(index_dir, MODEL_FILE))
        record = {
            "format": FORMAT, "run": run.path, "head": run.config.head.type, "weights": run.fingerprint,
            "run_files": run_files(run.path), "inputs": inputs, "text_features": text_names,
            "text_dims": {k: int(v) for k, v in run.info["text_dims"].items()},
            "vocab_size": run.info.get("vocab_size"),
            "model_bytes": os.path.getsize(os.path.join(index_dir, MODEL_FILE)), "opset": OPSET,
            "torch": torch.__version__,
        }
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(index_dir, META_FILE))  # last: a record means a whole export
    except Exception as exc:  # noqa: BLE001  (an op the exporter lacks, a full disk: search keeps torch)
        if os.path.exists(tmp):
            os.unlink(tmp)
        remove(index_dir)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("could not export the query encoder (%s): search will load torch", reason)
        return False
    log.info("wrote a torch-free query encoder (%s) for `vidfuse search`", MODEL_FILE)
    return True


@dataclass
class ExportedQueryEncoder:
    """onnxruntime session of an index's query encoder, and the record it was written with."""

    session: object
    record: dict

    @property
    def text_features(self) -> list[str]:
        return list(self.record["text_features"])

    def embed(self, vectors: dict[str, np.ndarray], tokens: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """``[1, D]`` float32 query embedding of one query's encoded inputs."""
        feeds = {}
        for key in self.record["inputs"]:
            if key == TOKENS:
                ids, offsets = tokens
                feeds[key] = np.ascontiguousarray(ids[offsets[0]:offsets[1]], dtype=np.int64)[None]
            else:
                feeds[key] = np.ascontiguousarray(vectors[key][:1], dtype=np.float32)
        return self.session.run(None, feeds)[0]

    def check_inputs(self, dims: dict[str, int], vocab_size: int | None, source: str) -> None:
        """The text features at hand have the dims the run was trained with (as the torch path checks)."""
        check_dims(self.record["text_dims"], dims, "text", source)
        check_vocab(self.record.get("vocab_size"), vocab_size, source)


def load(index_dir: str, run_dir: str, index_meta: dict) -> tuple[ExportedQueryEncoder | None, str]:
    """The index's exported query encoder if it fits ``run_dir`` as it is now, else (None, why not)."""
    path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(path):
        return None, f"{index_dir} holds no {MODEL_FILE} (its head needs torch, or it was built without onnx)"
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} record")
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc})"
    run = os.path.realpath(run_dir)
    if record.get("run") != run or index_meta.get("run") != run:
        return None, f"{path} was exported from run {record.get('run')}, not {run}"
    if record.get("weights") != index_meta.get("extra", {}).get("weights"):
        return None, f"{path} and the index were built from different weights of {run}"
    if record.get("run_files") != run_files(run):
        return None, f"{run} has changed since {path} was exported (retrained or resumed)"
    model = os.path.join(index_dir, MODEL_FILE)
    if not os.path.isfile(model) or os.path.getsize(model) != record.get("model_bytes"):
        return None, f"{model} is missing or not the size {path} records"
    try:
        import onnxruntime
    except ImportError:
        return None, "onnxruntime is not installed (pip install 'vidfuse[onnx]')"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on unused initialisers are not the user's
    options.intra_op_num_threads = 1  # one query of a few hundred dims: threads cost more than they give
    try:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own classes for a damaged file)
        return None, f"{model} does not load ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})"
    return ExportedQueryEncoder(session, record), ""
