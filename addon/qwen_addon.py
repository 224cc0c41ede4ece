"""The script mitmproxy loads: ``mitmdump -s addon/qwen_addon.py``.

mitmproxy puts this file's folder on ``sys.path``, so the package beside it imports
even when it is not installed.
"""

from qwen_oauth_mitm.proxy.addon import QwenAddon

addons = [QwenAddon()]
