"""A test helper shared by the host-sync tests."""

import torch


class HostReads:
    """Counts device→host conversions of tensors (``item``, ``bool``, ``float``, ``int``,
    ``tolist``) while active."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __enter__(self):
        self.count = 0
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        def wrap(fn):
            def counted(*a, **k):
                self.count += 1
                return fn(*a, **k)
            return counted

        for n, fn in self.saved.items():
            setattr(torch.Tensor, n, wrap(fn))
        return self

    def __exit__(self, *exc):
        for n, fn in self.saved.items():
            setattr(torch.Tensor, n, fn)
