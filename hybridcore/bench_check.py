"""`hybridcore bench --check`: the fused kernels against their PyTorch twins at a preset's real shapes
(the Mamba-2 mixer forward and backward, with and without packed documents, the in-place decode step and
each inference kernel), each error beside the reference's own bf16 error. Run on the GPU; the decode
parts also run on CPU through Triton's interpreter (tests)."""

from __future__ import annotations

import torch


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(config, batch: int, seq_len: int, device) -> dict:
    """Fused vs reference for the Mamba-2 mixer of this preset at [batch, seq_len] (bf16 autocast), and the
    SSD alone; each error is against an fp32 reference, beside the reference's own bf16 error."""
    from . import ops
    from .model.layers import LayerInputs
    from .model.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    mixer = Mamba2Mixer(config).to(device)
    mixer.reset_parameters()
    with torch.no_grad():
        mixer.in_proj.init_normal(config.init_std)
        mixer.out_proj.weight.normal_(0, config.init_std)
    no_rope = torch.zeros(0, device=device)  # the mixer reads no positions
    u = torch.randn(batch, seq_len, config.d_model, device=device)
    grad_out = torch.randn(batch, seq_len, config.d_model, device=device)
    lengths = [seq_len // 3, seq_len // 2, seq_len - seq_len // 3 - seq_len // 2]  # three packed documents
    seq_idx = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])[None].expand(batch, -1)

    def run(mode, amp, docs):
        mixer.zero_grad(set_to_none=True)
        x = u.clone().requires_grad_()
        with ops.use_kernels(mode), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = mixer(x, LayerInputs(no_rope, no_rope, seq_idx if docs else None))
        (out.float() * grad_out).sum().backward()
        grads = {"out": out.detach().float(), "d_input": x.grad}
        grads.update({f"d_{n}": p.grad for n, p in mixer.named_parameters()})
        return grads

    report = {}
    for docs in (False, True):
        truth = run("off", False, docs)
        fused = run("on", True, docs)
        ref_bf16 = run("off", True, docs)
        key = "mixer_packed" if docs else "mixer"
        report[key] = {name: {"fused": _rel(fused[name], truth[name]),
                              "reference_bf16": _rel(ref_bf16[name], truth[name])} for name in truth}
    ok = all(v["fused"] <= max(2 * v["reference_bf16"], 2e-2) for part in report.values() for v in part.values())
    for part, values in report.items():
        print(f"  check {part}: " + ", ".join(f"{k} {v['fused']:.1e} (ref bf16 {v['reference_bf16']:.1e})"
                                             for k, v in values.items()))
    report["decode_step"] = check_decode_step(config, batch, device)
    ok = ok and report["decode_step"]["y"] < 1e-2 and report["decode_step"]["state"] < 1e-5
    report["inference_kernels"] = kernels = check_inference_kernels(config, batch, device, seq_len)
    for name, errors in kernels.items():
        print(f"  check {name}: {errors['fused']:.1e} (ref bf16 {errors['reference_bf16']:.1e})")
    ok = ok and all(e["fused"] <= max(2 * e["reference_bf16"], 1e-2) for e in kernels.values())
    print(f"  check decode_step: y {report['decode_step']['y']:.1e}, state {report['decode_step']['state']:.1e}")
    report["pass"] = ok
    print(f"  check pass: {ok}")
    return report


def check_decode_step(config, batch: int, device, steps: int = 4) -> dict:
    """The in-place decode kernel against its twin at this preset's shapes (bf16 inputs, fp32 state),
    over a few tokens in a row; relative errors of the last output and of the state."""
    from . import ops
    from .ops import fused_ssd

    g = torch.Generator(device=device).manual_seed(0)
    heads, head_dim = config.mamba_n_heads, config.mamba_d_head
    groups, n = config.mamba_n_groups, config.mamba_d_state
    bf16 = dict(device=device, dtype=torch.bfloat16, generator=g)
    A = -torch.arange(1, heads + 1, device=device, dtype=torch.float32)
    D, dt_bias = torch.ones(heads, device=device), torch.full((heads,), -2.0, device=device)
    state = torch.randn(batch, heads, head_dim, n, device=device, generator=g)
    state_ref = state.clone()
    with torch.no_grad():
        for _ in range(steps):
            x, dt = torch.randn(batch, 1, heads, head_dim, **bf16), torch.randn(batch, 1, heads, **bf16)
            B, C = torch.randn(batch, 1, groups, n, **bf16), torch.randn(batch, 1, groups, n, **bf16)
            args, kw = (x, dt, A, B, C), dict(D=D, dt_bias=dt_bias, dt_softplus=True)
            y = fused_ssd.ssd_step(*args, state, **kw)
            y_ref = ops.ssd_step_ref(*args, state_ref, **kw)
    return {"y": _rel(y, y_ref), "state": _rel(state, state_ref)}


def _inference_cases(config, batch: int, device, context: int) -> dict:
    """Each inference kernel's arguments at this preset's shapes, bf16 (a decoding token; SwiGLU at a
    prefill's size, where it takes its kernel): name -> (arguments, positions of the tensors it writes)."""
    from .ops.rope import rope_tables

    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device=device, dtype=dtype, generator=g)
    conv_dim = config.d_ssm + 2 * config.mamba_n_groups * config.mamba_d_state
    kv_heads, head_dim = config.num_kv_heads, config.head_dim
    angles = r(batch, 1, config.rotary_dim, dtype=torch.float32) * context
    cos, signed_sin = rope_tables(angles.cos(), angles.sin())
    slot = torch.tensor([context * 3 // 4], device=device)
    mask = torch.full((batch, 1, 1, context), float("-inf"), device=device, dtype=torch.bfloat16)
    mask[..., :int(slot) + 1] = 0.0
    return {
        "rms_norm": ((r(batch, 1, config.d_model), r(config.d_model), config.norm_eps, False), ()),
        "conv_step": ((r(batch, conv_dim), r(batch, conv_dim, config.mamba_d_conv - 1),
                       r(conv_dim, config.mamba_d_conv), r(conv_dim), True), (1,)),
        "rope_cache_write": ((r(batch, 1, config.num_heads * head_dim), r(batch, 1, kv_heads * head_dim),
                              r(batch, 1, kv_heads * head_dim), cos, signed_sin, config.key_multiplier, None,
                              r(batch, kv_heads, context, head_dim), r(batch, kv_heads, context, head_dim), slot),
                             (7, 8)),
        "swiglu": ((r(batch, 256, config.d_ff), r(batch, 256, config.d_ff), 0.5), ()),
        "decode_attention": ((r(batch, kv_heads, config.num_heads // kv_heads, head_dim),
                              r(batch, kv_heads, context, head_dim), r(batch, kv_heads, context, head_dim), mask,
                              slot), ()),
    }


def check_inference_kernels(config, batch: int, device, context: int) -> dict:
    """Each inference kernel against its twin at this preset's shapes: bf16 inputs, the errors of its
    output and of what it writes in place, against the twin in fp32, beside the twin's own in bf16."""
    from . import ops
    from .ops import fused_decode

    twins = {"rms_norm": ops.rms_norm_ref, "conv_step": ops.causal_conv1d_step_ref,
             "rope_cache_write": ops.rope_cache_write_ref, "swiglu": ops.swiglu_ref,
             "decode_attention": ops.decode_attention_ref}
    report = {}
    for name, (args, written) in _inference_cases(config, batch, device, context).items():
        def run(fn, cast):
            copies = [cast(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            copies = [a.clone() if i in written else a for i, a in enumerate(copies)]
            with torch.no_grad(), ops.use_kernels("on"):
                return [fn(*copies)] + [copies[i] for i in written]
        truth = run(twins[name], lambda t: t.float())
        fused = run(getattr(fused_decode, name), lambda t: t)
        twin = run(twins[name], lambda t: t)
        report[name] = {"fused": max(_rel(a, b) for a, b in zip(fused, truth)),
                        "reference_bf16": max(_rel(a, b) for a, b in zip(twin, truth))}
    return report
