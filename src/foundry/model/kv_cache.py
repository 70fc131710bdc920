"""The decoder's KV caches: a preallocated one for generation and a ragged one for continuous batching (Yu et al.
2022, "Orca"), where each row holds one sequence at its own length, so sequences of different lengths decode in
one forward pass with their own positions and a key mask, and no padding ever enters a row."""

from __future__ import annotations

import torch


def causal_mask(q_pos: torch.Tensor, S: int, window: int = 0) -> torch.Tensor:
    """Boolean mask (..., T, S), True = attend: key index k <= query position q, and with a sliding window also
    q - k < window (transformers' sliding_window_overlay: a query sees itself and the window - 1 keys before)."""
    k = torch.arange(S, device=q_pos.device)
    mask = k <= q_pos[..., None]
    if window:
        mask = mask & (k > q_pos[..., None] - window)
    return mask


class KVCache:
    """Preallocated keys and values for every layer; `length` tokens are filled. `config` is the decoder's
    `LlamaConfig` (not imported here: the model imports this module)."""

    def __init__(self, config, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0
        # longrope models keep each row's token ids too: crossing the original context re-prefills a row
        longrope = (config.rope_scaling or {}).get("rope_type") == "longrope"
        self.tokens = torch.zeros((batch_size, max_len), dtype=torch.long, device=device) if longrope else None

    def row_lengths(self, B: int) -> list[int]:
        """Tokens held by each of the first B rows before the coming step."""
        return [self.length] * B

    def record_tokens(self, input_ids: torch.Tensor) -> None:
        self.tokens[:, self.length:self.length + input_ids.shape[1]] = input_ids

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} tokens")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.length += T

    def reset(self) -> None:
        self.length = 0


class RaggedKVCache(KVCache):
    """Rows hold sequences of different lengths (continuous batching): row b holds `lengths[b]` tokens.

    A forward pass over B rows (the first B) appends its T tokens to each row at that row's own offset, with
    positions counted from the row's start and a mask that hides every key past the row's end, so each row
    computes what it would alone. Rows are filled by `load_row` (from a one-sequence prefill cache) and
    moved by `move_row`, which lets a caller keep its live sequences in the first rows.
    """

    def __init__(self, config, batch_size: int, max_len: int, device, dtype):
        super().__init__(config, batch_size, max_len, device, dtype)
        self.lengths = [0] * batch_size  # on the host: building a step's positions needs no device sync

    def prepare(self, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids (B, T) and the boolean attention mask (B, 1, T, S) for appending T tokens to rows :B.
        Rows all of one length (always so for one row) take the plain cache's path: slice writes, and no
        mask for a single new token."""
        lengths = self.lengths[:B]
        longest = max(lengths)
        if longest + T > self.max_len:
            raise ValueError(f"KV cache full: {longest + T} > {self.max_len} tokens")
        self._uniform = longest if min(lengths) == longest else None
        self._keys, self._mask = longest + T, None  # keys in the longest row after this step; its causal mask
        if self._uniform is not None:
            self._positions = torch.arange(longest, longest + T, device=device).expand(B, T)
            if T == 1:
                return self._positions, None
        else:
            offsets = torch.tensor(lengths, device=device)
            self._positions = offsets[:, None] + torch.arange(T, device=device)  # (B, T)
        self._mask = causal_mask(self._positions, longest + T)[:, None]  # (B, 1, T, S)
        return self._positions, self._mask

    def row_lengths(self, B: int) -> list[int]:
        return self.lengths[:B]

    def record_tokens(self, input_ids: torch.Tensor) -> None:
        self.tokens[:input_ids.shape[0]].scatter_(1, self._positions, input_ids)

    def window_mask(self, window: int) -> torch.Tensor | None:
        """The mask (B, 1, T, S) of a sliding layer for the step `prepare` set up: each row's queries see their own
        last `window` keys (a row's key index is its position). None while no row reaches past the window."""
        if self._keys <= window:
            return self._mask
        return causal_mask(self._positions, self._keys, window)[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        S = self._positions.shape[1] + (self._uniform if self._uniform is not None else max(self.lengths[:B]))
        if self._uniform is not None:
            self.k[layer][:B, :, self._uniform:S] = k
            self.v[layer][:B, :, self._uniform:S] = v
        else:
            index = self._positions[:, None, :, None].expand(B, H, T, D)  # each row writes at its own offset
            self.k[layer][:B].scatter_(2, index, k)
            self.v[layer][:B].scatter_(2, index, v)
        return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S]

    def advance(self, T: int) -> None:
        B = self._positions.shape[0]
        self.lengths[:B] = [n + T for n in self.lengths[:B]]

    def load_row(self, row: int, source: KVCache, source_row: int = 0, length: int | None = None) -> None:
        """Copy the first `length` tokens (default: all `source.length`) of `source_row` of a plain cache (a
        prefill's) into `row`."""
        n = source.length if length is None else length
        for layer in range(len(self.k)):
            self.k[layer][row, :, :n] = source.k[layer][source_row, :, :n]
            self.v[layer][row, :, :n] = source.v[layer][source_row, :, :n]
        if self.tokens is not None:
            self.tokens[row, :n] = source.tokens[source_row, :n]
        self.lengths[row] = n

    def move_row(self, src: int, dst: int) -> None:
        """Move row `src` to row `dst` (a copy within this cache) and free `src`."""
        if src != dst:
            self.load_row(dst, self, src, self.lengths[src])
            self.lengths[src] = 0

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)
