"""Block infrastructure for passes over a decoder-only model, one block at a time: `block.walk_blocks` (the one
onload / run / offload loop), capture of the blocks' inputs, placement (resident, CPU offload, disk stream),
run checkpoints, torchrun sharding and reports. It imports no pruner and no allocation: `sparsekit.pruning`,
`sparsekit.allocation` and `sparsekit.eval` sit above it and drive it (architecture.md §1)."""
