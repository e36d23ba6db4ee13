"""The package works, and says why, when the compiled extension is missing."""
import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, torch, unet_fast
from unet_fast import reference
from unet_fast.ops import crop_concat
torch.manual_seed(0)
ref = reference.UNet(depth=3, base_channels=4)
fast = unet_fast.UNet(depth=3, base_channels=4)
fast.load_state_dict(ref.state_dict())
x = torch.randn(2, 1, 44, 44)
same = torch.allclose(ref(x), fast(x), atol=1e-5)
print(json.dumps({"info": unet_fast.info(), "same": same,
                  "cat": crop_concat(torch.ones(1, 1, 6, 6), torch.zeros(1, 1, 4, 4)).shape[1]}))
"""


def run_isolated(env_extra):
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_package_works_without_the_extension():
    result = run_isolated({"UNET_FAST_DISABLE_EXTENSION": "1"})
    assert result["same"] and result["cat"] == 2
    assert "UNET_FAST_DISABLE_EXTENSION" in result["info"]["extension"]
    backend = result["info"]["backends"]["extension-cpu"]
    assert not backend["available"] and "not loaded" in backend["why"]
    assert result["info"]["backends"]["torch"]["available"]


def test_info_reports_the_extension():
    import unet_fast
    from unet_fast import _extension

    report = unet_fast.info()
    assert report["backends"]["torch"]["available"]
    assert report["backends"]["extension-cpu"]["available"] == _extension.available()
    assert report["extension"].startswith("loaded" if _extension.available() else "missing")
