"""sluis."""

# Before anything below imports asyncssh: the parts of it sluis never uses stay unloaded.
from .unloaded import keep_out

keep_out()
