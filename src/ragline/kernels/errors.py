"""The one error kernels raise: the kernel asked for cannot run here (triton is
not installed, or there is no device it runs on). Kernels are pure math and
import nothing from the rest of ragline; callers turn this into their own
user-facing error."""


class KernelUnavailable(RuntimeError):
    pass
