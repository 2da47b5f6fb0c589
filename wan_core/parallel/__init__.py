"""One video on several devices: Ulysses sequence parallelism of the DiT over a `torch.distributed` process group.

- `sequence`: the token split of one DiT forward (padding, RoPE and per-token time index per rank, gather);
- `ulysses`: the attention-backend wrapper (yunchang's all-to-all around whichever backend the runtime resolved);
- `launch`: the `torchrun` side of the CLI (process group, device per rank, shared seed, rank 0 writes);
- `workers`: a pool of kept worker processes, one per device, that denoise one video together (the canvas path).
"""
