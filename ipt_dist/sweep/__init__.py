"""PT and IST sweeps without Ray: job identity (`jobs`), validation and planning (`plan`), the
five-settings grid (`grid`), packing (`packing`), what a pack is given (`inputs`), the pack body a
worker runs (`worker`), the sweep's files (`results`), progress (`progress`) and the smoke test's
preparation (`smoke`). `ipt_dist.distributed.fanout` runs them on Ray.
"""
