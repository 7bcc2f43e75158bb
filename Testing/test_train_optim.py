"""The fused-Adam helpers (GANTrainerLib.optim) rely on private torch attributes: fail loudly when torch changes."""

from __future__ import annotations

import pytest
import torch

from GANTrainerLib.optim import check_fused_adam_hooks


def test_the_private_torch_attributes_of_the_fused_adam_step_work_on_this_torch():
    # Fails with "torch X.Y: the fused-Adam helpers of GANTrainerLib.optim rely on the private attribute `…`, which no
    # longer works (…)" after a torch upgrade that breaks them: adapt GANTrainerLib/optim.py or pin torch.
    check_fused_adam_hooks()


class _IgnoresFoundInf(torch.optim.Adam):
    """An Adam whose step no longer reads ``found_inf`` (what a torch release could do)."""

    def step(self, closure=None):
        found_inf = self.__dict__.pop("found_inf", None)
        try:
            return super().step(closure)
        finally:
            if found_inf is not None:
                self.found_inf = found_inf


class _NoAmpScaling(torch.optim.Adam):
    """An Adam on which ``_step_supports_amp_scaling`` can no longer be switched on."""

    @property
    def _step_supports_amp_scaling(self):
        return False

    @_step_supports_amp_scaling.setter
    def _step_supports_amp_scaling(self, value):
        pass


@pytest.mark.parametrize("adam, attribute", [(_IgnoresFoundInf, "found_inf"),
                                             (_NoAmpScaling, "_step_supports_amp_scaling")])
def test_the_check_names_the_torch_version_and_the_attribute_that_broke(adam, attribute):
    with pytest.raises(RuntimeError) as err:
        check_fused_adam_hooks(adam)
    message = str(err.value)
    assert message.startswith(f"torch {torch.__version__}: ") and f"private attribute `{attribute}`" in message
