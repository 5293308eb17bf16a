"""segjax.platform: the XLA:CPU flags train.py and eval.py set, and that XLA really applies them."""

import os
import subprocess
import sys
import textwrap

from segjax import platform

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_are_appended_once_and_a_users_setting_wins():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  flags = platform.configure_xla_cpu(env)
  assert flags == "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type="
  assert platform.configure_xla_cpu(env) == flags  # idempotent
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=convolution"}
  assert platform.configure_xla_cpu(user) == "--xla_cpu_experimental_ynn_fusion_type=convolution"
  assert platform.configure_xla_cpu({}) == "--xla_cpu_experimental_ynn_fusion_type="


_PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    if sys.argv[2] == "segjax":
      from segjax import platform
      platform.configure_xla_cpu()
    import jax, jax.numpy as jnp
    x, w = jnp.ones((8, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    print(jax.jit(conv).lower(x, w).compile().as_text())
""")


def _compiled_conv(mode: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-c", _PROBE, _REPO, mode], env=env, capture_output=True, text=True,
                        check=True, timeout=300).stdout


def test_the_flag_takes_convolutions_away_from_ynn_fusions():
  # XLA's defaults wrap the convolution in a YNNPACK fusion (single-threaded on the U-Net step, BENCHMARKS.md);
  # with segjax's flags it stays a plain convolution, which XLA:CPU runs with Eigen on the intra-op pool.
  assert "ynn_fusion" in _compiled_conv("stock")
  segjax_hlo = _compiled_conv("segjax")
  assert "ynn_fusion" not in segjax_hlo and "convolution(" in segjax_hlo
