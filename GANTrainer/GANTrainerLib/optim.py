"""Optimiser steps that skip a non-finite loss, on CUDA without a host sync (fused Adam told ``found_inf``).

**These helpers rely on private PyTorch attributes** (checked by :func:`check_fused_adam_hooks`, which the test
suite runs on the installed torch, so an upgrade that breaks them fails loudly instead of training on NaNs):

* ``optimizer.found_inf`` — :meth:`torch.optim.Adam.step` reads this attribute (``getattr(self, "found_inf",
  None)``) and hands it to the fused kernel, which then leaves the weights and step counters untouched when it
  is non-zero. :class:`torch.amp.GradScaler` sets and deletes it the same way; we set it ourselves when there
  is no scaler.
* ``optimizer._step_supports_amp_scaling`` — :meth:`torch.amp.GradScaler.step` passes its device-side
  ``found_inf`` to an optimiser with this flag instead of reading it on the host (``.item()``).
* ``param_groups[i]["fused"]`` switched on an existing optimiser, with its ``state[p]["step"]`` tensors moved to
  the parameters' device (the fused kernel's requirement).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["finite_step", "set_fused_adam", "check_fused_adam_hooks"]


def finite_step(loss_value, optimizer, scaler, dist=None, device_side: Optional[bool] = None):
    """Step if the loss is finite on every rank; otherwise skip (and halve an fp16 scale).

    Returns whether it stepped. On CPU (and other non-CUDA devices): a Python bool, after one host sync. On CUDA:
    a 0-d float tensor on the device (1 = stepped) and no host sync: Adam runs its fused kernel, which skips the
    update when told ``found_inf``; with an fp16 GradScaler a non-finite loss instead poisons one gradient with
    NaN, so the scaler's own (device-side) inf check skips the step and backs off the scale. Count failures with
    ``(bad + 1) * (1 - ok)``, which works for both kinds of result. ``device_side`` forces either path (tests).
    ``dist`` (:class:`GANTrainerLib.distributed.Dist`): in a process group the loss must be finite on all ranks.
    """
    import torch

    finite = torch.isfinite(loss_value.detach()).to(torch.float32)
    if dist is not None and dist.group:
        import torch.distributed as tdist

        tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)
    if finite.device.type == "cuda" if device_side is None else device_side:
        set_fused_adam(optimizer, True)
        finite = finite.reshape(())
        if scaler.is_enabled():
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                smallest = min(grads, key=lambda t: t.numel())
                smallest.add_(torch.where(finite > 0, 0.0, float("nan")).to(smallest.dtype))
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.found_inf = 1.0 - finite      # private: read by Adam.step (module docstring)
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        return finite
    if finite.item() < 1:
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() / 2)
        return False
    scaler.step(optimizer)
    scaler.update()
    return True


def set_fused_adam(optimizer, on: bool) -> None:
    """Switch an Adam optimiser to its fused kernel (``on``) in place; moves its step counters to the parameters'
    device. Needed once per optimiser (also after loading a state saved without it); a no-op afterwards."""
    import torch

    optimizer._step_supports_amp_scaling = on  # private: GradScaler hands a fused optimiser found_inf (no sync)
    if bool(optimizer.param_groups[0].get("fused")) == on:  # (a state saved by a fused run loads as fused)
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, None) if on else (None, None)
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device if on else "cpu", dtype=torch.float32)


def check_fused_adam_hooks(adam_class=None) -> None:
    """Raise ``RuntimeError`` naming the torch version and the private attribute if :func:`finite_step`'s
    device-side path no longer works on the installed torch (runs on CPU in milliseconds; ``adam_class``: tests).

    Checks, on a tiny model: a fused Adam told ``found_inf = 1`` keeps its weights and step counters, told
    ``found_inf = 0`` it steps; and a GradScaler steps a ``_step_supports_amp_scaling`` optimiser without
    reading ``found_inf`` on the host, skipping a poisoned step.
    """
    import torch

    adam_class = adam_class or torch.optim.Adam
    where = f"torch {torch.__version__}"

    def fail(attribute: str, what: str) -> None:
        raise RuntimeError(f"{where}: the fused-Adam helpers of GANTrainerLib.optim rely on the private attribute "
                           f"`{attribute}`, which no longer works ({what}); CUDA training would not skip "
                           "non-finite steps. Adapt GANTrainerLib/optim.py to this torch version or pin torch.")

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    try:
        opt = adam_class(net.parameters(), lr=0.1)
        net(torch.ones(1, 3)).sum().backward()
        opt.step()                                      # a first, normal step creates the state
        set_fused_adam(opt, True)
    except Exception as exc:  # noqa: BLE001 - any failure here is the message's subject
        fail("param_groups[i]['fused']", f"switching an Adam optimiser to its fused kernel failed: {exc}")
    if not getattr(opt, "_step_supports_amp_scaling", False):
        fail("_step_supports_amp_scaling", "it could not be set on the optimiser")
    for found_inf, should_step in ((1.0, False), (0.0, True)):
        weights = [p.detach().clone() for p in net.parameters()]
        steps = [opt.state[p]["step"].clone() for p in net.parameters()]
        opt.zero_grad(set_to_none=True)
        net(torch.ones(1, 3)).sum().backward()
        opt.found_inf = torch.tensor(found_inf)
        try:
            opt.step()
        except Exception as exc:  # noqa: BLE001
            fail("found_inf", f"a fused Adam step with it set raised {type(exc).__name__}: {exc}")
        finally:
            del opt.found_inf
        moved = not all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
        counted = not all(torch.equal(opt.state[p]["step"], s) for p, s in zip(net.parameters(), steps))
        if (moved, counted) != (should_step, should_step):
            fail("found_inf", f"a fused Adam step told found_inf={found_inf:g} "
                              + ("did not step" if should_step else "still updated the weights or step counters"))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = []
    real_step = opt.step

    def spy(*args, **kwargs):                           # what GradScaler hands the optimiser
        seen.append(torch.is_tensor(getattr(opt, "found_inf", None)))
        return real_step(*args, **kwargs)

    opt.step = spy
    try:
        for poisoned in (False, True):
            weights = [p.detach().clone() for p in net.parameters()]
            opt.zero_grad(set_to_none=True)
            scaler.scale(net(torch.ones(1, 3)).sum() * (float("nan") if poisoned else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
            moved = not all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
            if moved == poisoned:
                fail("_step_supports_amp_scaling", f"a GradScaler step of a fused Adam {'changed' if poisoned else 'kept'}"
                                                   f" the weights with {'a non-finite' if poisoned else 'a finite'} loss")
    finally:
        del opt.step
    if seen != [True, True]:
        fail("_step_supports_amp_scaling", "GradScaler no longer hands its device-side found_inf to the optimiser "
                                           "(it would read it on the host: one sync per step)")
    if scaler.get_scale() != 512.0:
        fail("_step_supports_amp_scaling", f"GradScaler did not back off its scale after a skipped step "
                                           f"({scaler.get_scale()} instead of 512)")
