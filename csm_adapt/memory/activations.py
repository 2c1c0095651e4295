"""The analytical activation model: what one micro-batch's forward keeps for the backward pass.

The model follows the code of csm_adapt/model/csm.py and llama.py op by op and lists, per block in
forward order (embeddings, each backbone layer, the backbone's final norm, the codebook-0 head, the
decoder's input, each decoder layer, the audio heads), the bytes autograd saves, the bytes alive
only while the block runs (forward and backward), the bytes the forward keeps until the micro-batch
ends (the logits in TrainOutput), and the gradient bytes its backward creates. The phase walk in
memory/plan.py turns the blocks into a peak.

What decides the sizes (why each term is there):
- Rows: the backbone sees T = B*S rows; codebook 0 is scored on F frames, the depth decoder runs on
  M frames of K positions each (the loss strategy's share of the frames).
- Autocast (bf16/fp16): linear inputs and outputs are in the compute dtype, but the backbone's
  residual stream and its RMSNorm outputs stay fp32 (the embeddings are fp32), so each linear of the
  backbone casts its input separately, and that copy is what it saves; the decoder's residual is in
  the compute dtype (its input comes out of the projection), so its linears share one input.
- A frozen fp32 weight under autocast is cast anew at every call, and that copy is saved for the
  input's gradient: a LoRA over an fp32 base keeps a bf16 copy of every frozen linear until the
  backward pass (train.frozen_dtype = "bf16" avoids it). A trained weight's copy lives in the
  autocast cache until the forward pass ends. NF4 weights are dequantised again in the backward.
- Autograd saves an operand only when the other operand's gradient is needed: a frozen linear with no
  LoRA branch saves no input, a frozen RMSNorm scale saves no normalised input.
- Packed attention (llama.Segments) gathers q, k, v per sample: N*L rows, L the longest sample.
- The logits: codebook 0's [F, V] and the decoder's [M, K-1, V] are kept in TrainOutput until the
  micro-batch ends; cross-entropy computes in fp32 and saves its fp32 log-softmax.
- Activation checkpointing keeps only each layer's input; the layer's saved tensors come back, one
  layer at a time, in the backward pass.
"""

from __future__ import annotations

import attrs

from csm_adapt.memory.params import LinearFacts, ModelFacts
from csm_adapt.model.config import TransformerFlavor

LONG = 8
FP32 = 4


@attrs.frozen
class Shapes:
    """One micro-batch as the model sees it."""

    batch: int  # B packed sequences
    seq_len: int  # S rows each
    frames: int  # F scored audio frames (codebook 0)
    decoder_frames: int  # M frames given to the depth decoder
    attention_rows: int  # N*L: rows of the per-sample attention grid (>= B*S)
    samples: int  # N: samples (plus padding tails) in the micro-batch
    compute_bytes: int  # 2 under bf16/fp16 autocast, 4 in fp32
    checkpointing: bool

    @property
    def rows(self) -> int:
        return self.batch * self.seq_len


@attrs.define
class Block:
    name: str
    part: str  # "embeddings", "backbone", "heads", "decoder"
    saved: int = 0  # kept for the backward pass until this block's backward ran
    weight_copies: int = 0  # of `saved`: compute-dtype copies of frozen weights
    cache: int = 0  # alive until the forward pass ends (autocast's weight cache, under checkpointing)
    kept: int = 0  # alive until the micro-batch ends (the logits in TrainOutput)
    forward_extra: int = 0  # alive only while the block runs forward
    backward_extra: int = 0  # alive only while the block's backward runs
    grads: int = 0  # parameter gradients its backward creates (fp32)


def activation_blocks(facts: ModelFacts, shapes: Shapes) -> list[Block]:
    """The blocks of one micro-batch's forward, in forward order."""
    args = facts.args
    bb, dec = args.backbone, args.decoder
    k, v = args.audio_num_codebooks, args.audio_vocab_size
    a = shapes.compute_bytes
    t, f, m = shapes.rows, shapes.frames, shapes.decoder_frames
    blocks: list[Block] = []

    # Embeddings: the sum of the masked text embedding and the K audio embeddings (embedding_bag).
    trains_text, trains_audio = facts.trains_any("text_embeddings"), facts.trains_any("audio_embeddings")
    emb = Block("embeddings", "embeddings")
    emb.saved = t * FP32 + (t * LONG if trains_text else 0)  # the text mask; the text ids
    if trains_audio:
        emb.saved += t * k * (2 * LONG + FP32) + 2 * t * LONG  # ids, offset2bag, weights, bag sizes
        emb.backward_extra = args.audio_vocab_size * k * bb.embed_dim * FP32  # a dense table gradient to add
    emb.grads = _param_bytes(facts, "text_embeddings") if trains_text else 0
    emb.forward_extra = 3 * t * bb.embed_dim * FP32 + t * k * (LONG + FP32)
    blocks.append(emb)
    requires_grad = trains_text or trains_audio

    # The backbone over all rows (packed samples: per-sample attention), then its final norm.
    requires_grad = _transformer(
        blocks, facts, "backbone", bb, shapes, rows=t, attention_rows=shapes.attention_rows,
        residual_bytes=FP32, requires_grad=requires_grad,
    )  # fmt: skip
    norm = Block("backbone.norm", "backbone")
    norm.saved = _norm_saved(facts, "backbone.norm.scale", t, bb.embed_dim, requires_grad)
    norm.grads = _param_bytes(facts, "backbone.norm.scale")
    # h[:, :-1] reshaped (a copy when B > 1), gathered rows for both heads.
    norm.forward_extra = 2 * t * bb.embed_dim * FP32
    blocks.append(norm)

    # Codebook 0: gathered frames through the head, fp32 cross-entropy.
    c0 = Block("codebook0_head", "heads")
    head = _linear_facts(facts, "codebook0_head", bb.embed_dim, v)
    saved, copies, extra = _linear(head, f, a, input_bytes=FP32, requires_grad=requires_grad, shared=False)
    c0.saved = saved + f * LONG + f * v * FP32  # gather indices, log-softmax output
    c0.weight_copies = copies
    c0.kept = f * v * a + f * LONG  # logits and targets in TrainOutput
    c0.forward_extra = f * bb.embed_dim * FP32 + extra + (f * v * FP32 if a != FP32 else 0)
    c0.backward_extra = f * v * 2 * FP32 + extra  # the gradients of the log-softmax's output and input
    c0.grads = _param_bytes(facts, "codebook0_head")
    blocks.append(c0)

    # The decoder's input: [h_{t-1}, embeddings of codebooks 0..K-2] through the projection.
    dec_in = Block("decoder input", "decoder")
    proj = _linear_facts(facts, "projection", bb.embed_dim, dec.embed_dim)
    saved, copies, extra = _linear(proj, m * k, a, input_bytes=FP32, requires_grad=requires_grad, shared=False)
    dec_in.saved = saved + m * LONG + (m * (k - 1) * LONG if trains_audio else 0)
    dec_in.weight_copies = copies
    dec_in.kept = m * k * LONG  # the frames' codes (decoder targets)
    dec_in.forward_extra = m * bb.embed_dim * FP32 + 2 * m * k * bb.embed_dim * FP32 + extra
    dec_in.backward_extra = 2 * m * k * bb.embed_dim * FP32 + extra
    dec_in.grads = _param_bytes(facts, "projection") + (_param_bytes(facts, "audio_embeddings") if trains_audio else 0)
    blocks.append(dec_in)
    requires_grad = requires_grad or proj.trains_weight or proj.lora_rank > 0

    decoder_shapes = attrs.evolve(shapes, batch=m, seq_len=k)
    requires_grad = _transformer(
        blocks, facts, "decoder", dec, decoder_shapes, rows=m * k, attention_rows=None,
        residual_bytes=a, requires_grad=requires_grad,
    )  # fmt: skip

    # Audio heads: the decoder's final norm, then [M, K-1, D] x [K-1, D, V] logits, fp32 cross-entropy.
    out = Block("audio_head", "decoder")
    trains_head = facts.trains_any("audio_head")
    head_numel = (k - 1) * dec.embed_dim * v
    out.saved = _norm_saved(facts, "decoder.norm.scale", m * k, dec.embed_dim, requires_grad)
    if trains_head:
        out.saved += m * k * dec.embed_dim * a  # the normalised output, the einsum's operand
    if a != FP32:
        # audio_head.to(compute dtype): a new copy at every call, saved for the decoder's gradient.
        if requires_grad:
            out.weight_copies = head_numel * a
            out.saved += out.weight_copies
        else:
            out.forward_extra += head_numel * a
    logits = m * (k - 1) * v
    out.saved += logits * FP32  # log-softmax output
    out.kept = logits * a + m * (k - 1) * LONG
    out.forward_extra += logits * (a + (FP32 if a != FP32 else 0))  # flatten(0, 1) copy, fp32 cast
    # The gradients of the log-softmax's output and input (fp32), then the head's in the compute dtype.
    out.backward_extra = logits * 2 * FP32 + (head_numel * a if trains_head else 0)
    out.grads = _param_bytes(facts, "audio_head") + _param_bytes(facts, "decoder.norm.scale")
    blocks.append(out)
    return blocks


def _transformer(
    blocks: list[Block],
    facts: ModelFacts,
    prefix: str,
    flavor: TransformerFlavor,
    shapes: Shapes,
    *,
    rows: int,
    attention_rows: int | None,
    residual_bytes: int,
    requires_grad: bool,
) -> bool:
    """Append one block per layer; returns whether the stream requires grad after the stack."""
    a = shapes.compute_bytes
    d, hd = flavor.embed_dim, flavor.head_dim
    dq, dkv, inter = flavor.num_heads * hd, flavor.num_kv_heads * hd, flavor.intermediate_dim
    t = rows
    # The rotary tables indexed by position: [B, S, hd/2] cos and sin, shared by the layers.
    blocks.append(Block(f"{prefix} rope", prefix, saved=2 * t * (hd // 2) * FP32))
    # Under autocast an fp32 input is cast by each linear on its own (no sharing).
    per_call_cast = a != residual_bytes
    for i in range(flavor.num_layers):
        name = f"{prefix}.layers.{i}"
        shapes_of = {
            "attn.q_proj": (d, dq), "attn.k_proj": (d, dkv), "attn.v_proj": (d, dkv), "attn.output_proj": (dq, d),
            "mlp.w1": (d, inter), "mlp.w2": (inter, d), "mlp.w3": (d, inter),
        }  # fmt: skip
        lin = {n: _linear_facts(facts, f"{name}.{n}", *io) for n, io in shapes_of.items()}
        saved = copies = 0
        extra_fwd = extra_bwd = 0

        # Self-attention: norm, q/k/v, rotary, attention, output projection.
        saved += _norm_saved(facts, f"{name}.sa_norm.scale", t, d, requires_grad)
        rg = requires_grad or facts.trains_any(f"{name}.sa_norm.scale")
        s, c, e = _linear_group([lin["attn.q_proj"], lin["attn.k_proj"], lin["attn.v_proj"]], t, a,
                                residual_bytes, rg, shared=not per_call_cast)  # fmt: skip
        saved, copies, extra_fwd = saved + s, copies + c, max(extra_fwd, e)
        rg = rg or any(x.trains_weight or x.lora_rank for x in lin.values())
        if attention_rows is not None:
            n_l = attention_rows
            saved += n_l * (dq + 2 * dkv) * a + 3 * n_l * LONG  # gathered q, k, v and their indices
        else:
            n_l = t
            saved += t * (dq + 2 * dkv) * a  # rotated q, k and v
        saved += n_l * dq * a + n_l * flavor.num_heads * FP32  # attention output, log-sum-exp
        extra_fwd = max(extra_fwd, 2 * t * dq * FP32)  # rotary in fp32
        # output_proj reads the attention output laid back out by rows (scatter, or a transpose copy).
        s, c, e = _linear(lin["attn.output_proj"], t, a, input_bytes=a, requires_grad=rg, shared=False)
        saved, copies = saved + s, copies + c
        # MLP: norm, gate and up projections, SiLU(gate) * up, down projection.
        saved += _norm_saved(facts, f"{name}.mlp_norm.scale", t, d, rg)
        s, c, e = _linear_group([lin["mlp.w1"], lin["mlp.w3"]], t, a,
                                residual_bytes, rg, shared=not per_call_cast)  # fmt: skip
        saved, copies, extra_fwd = saved + s, copies + c, max(extra_fwd, e)
        saved += 3 * t * inter * a  # gate (SiLU input), SiLU output, up (the product's operands)
        s, c, e = _linear(lin["mlp.w2"], t, a, input_bytes=a, requires_grad=True, shared=False)  # reads the product
        saved, copies = saved + s, copies + c
        requires_grad = True

        grads = sum(_param_bytes(facts, f"{name}.{n}") for n in lin) + _param_bytes(facts, f"{name}.sa_norm.scale")
        grads += _param_bytes(facts, f"{name}.mlp_norm.scale")
        # Backward: the MLP's gradients [T, I] (three at once) and a residual gradient in fp32.
        extra_bwd = 3 * t * inter * a + 2 * t * d * FP32 + _largest_weight_grad(lin.values(), a)
        trained_copies = sum(x.weight_numel * a for x in lin.values() if x.trains_weight and a != FP32)
        if shapes.checkpointing:
            # Only the layer's input is kept; the rest is recomputed for (and freed after) its backward.
            block = Block(name, prefix, saved=t * d * residual_bytes, cache=trained_copies,
                          forward_extra=3 * t * inter * a + 2 * t * d * FP32 + copies - trained_copies,
                          backward_extra=saved + extra_bwd, grads=grads)  # fmt: skip
        else:
            block = Block(name, prefix, saved=saved, weight_copies=copies, forward_extra=extra_fwd + 2 * t * d * FP32,
                          backward_extra=extra_bwd, grads=grads)  # fmt: skip
        blocks.append(block)
    return requires_grad


def _linear_facts(facts: ModelFacts, name: str, in_features: int, out_features: int) -> LinearFacts:
    """The facts of a linear; an adapter plugin that replaced it with something else (no 2-D weight)
    is modelled as a plain linear, trained if anything under its name trains."""
    found = facts.linears.get(name)
    if found is not None:
        return found
    return LinearFacts(in_features, out_features, trains_weight=facts.trains_any(name), weight_dtype="float32")


def _linear_group(
    linears: list[LinearFacts], t: int, a: int, input_bytes: int, requires_grad: bool, *, shared: bool
) -> tuple[int, int, int]:
    """Linears reading one input: shared (one saved input for all) or each casting its own copy."""
    saved = copies = extra = 0
    saves_input = False
    for lin in linears:
        s, c, e = _linear(lin, t, a, input_bytes, requires_grad, shared=shared)
        saved, copies, extra = saved + s, copies + c, max(extra, e)
        saves_input = saves_input or lin.trains_weight or lin.lora_rank > 0
    if shared and saves_input:
        saved += t * linears[0].in_features * input_bytes
    return saved, copies, extra


def _linear(lin: LinearFacts, t: int, a: int, input_bytes: int, requires_grad: bool, *, shared: bool):
    """(saved, of which frozen-weight copies, forward temporaries) of one linear call on t rows.

    `shared`: the input is saved once by the caller (not cast per call); else a cast copy is made
    (and saved, when something needs it) by this call.
    """
    saved = copies = extra = 0
    cast = a != input_bytes  # autocast casts an fp32 input to the compute dtype
    saves_input = lin.trains_weight or lin.lora_rank > 0
    if not shared and saves_input:
        saved += t * lin.in_features * (a if cast else input_bytes)
    elif cast and not shared:
        extra += t * lin.in_features * a  # cast for the matmul, not saved
    if lin.weight_dtype == "nf4":
        extra += lin.weight_numel * a  # dequantised for the matmul (again in the backward)
    elif lin.weight_dtype == "float32" and a != FP32:
        if lin.trains_weight or requires_grad:
            # A trained weight's copy is autocast's cached one: alive until the forward pass ends,
            # and saved for the input's gradient; a frozen one's is made anew at each call.
            copies += lin.weight_numel * a  # cast anew each call, saved for the input's gradient
        else:
            extra += lin.weight_numel * a
    if lin.lora_rank:
        saved += t * lin.lora_rank * a  # the rank-r intermediate
        if lin.dropout:
            saved += t * lin.in_features * (a + 1)
        if lin.dora:
            saved += t * lin.out_features * a
            extra += 3 * lin.weight_numel * FP32  # the row norms of W + BA are computed in fp32
    return saved + copies, copies, extra


def _largest_weight_grad(linears, a: int) -> int:
    """A trained weight's gradient is computed in the compute dtype, then cast to fp32."""
    return max((x.weight_numel * (a + FP32) for x in linears if x.trains_weight), default=0)


def _norm_saved(facts: ModelFacts, scale: str, t: int, d: int, requires_grad: bool) -> int:
    """RMSNorm in fp32: its fp32 input and the rsqrt when the input needs a gradient; the normalised
    input when the scale trains."""
    saved = t * d * FP32 + t * FP32 if requires_grad else 0
    if facts.trains_any(scale):
        saved += t * d * FP32
    return saved


def _param_bytes(facts: ModelFacts, prefix: str) -> int:
    """fp32 gradient bytes of the trainable parameters under `prefix`."""
    return sum(4 * n for name, n in facts.trainable_numels.items() if name == prefix or name.startswith(prefix + "."))
