"""The Ray Data pipeline of a job: the rows still to do, read and spread one batch per actor call,
through a fixed pool of :class:`~cluster.worker.ReconstructionWorker` actors
(docs/batch_job.md#ray-data-settings).
"""
from __future__ import annotations

from .config import JobConfig
from .preflight import Preflight
from .row_index import ROW_INDEX
from .worker import WorkerSettings

__all__ = ["build_dataset"]

def build_dataset(cfg: JobConfig, pre: Preflight, settings: WorkerSettings, num_actors: int,
                   cpus_per_actor: float, gpus_per_actor: float):
    import ray.data
    from ray.data.expressions import col

    from .worker import ReconstructionWorker

    plan = pre.plan
    if pre.inputs.images is not None:
        # An image folder: the rows still to do, built on the driver from the listing (ids, file
        # names and paths only; the actors read the images), so no filter is needed.
        from .image_folder import image_rows

        rows = image_rows(pre.inputs.images, plan.todo_ids(), cfg.columns, latents=pre.inputs.latents,
                          masks=pre.inputs.masks)
        ds = ray.data.from_arrow(rows)
    elif cfg.id_from == ROW_INDEX:
        ds = _read_with_row_index_ids(cfg, pre)
    else:
        ds = ray.data.read_parquet(
            plan.files_to_read,
            filesystem=pre.inputs.arrow_filesystem(),
            include_paths=pre.kinds.needs_file_paths,
        )
        # Projection is pushed into the reader: other columns are never read.
        read = [c for c in cfg.columns.read_list() if pre.kinds.has_latent or c != cfg.columns.latent]
        if cfg.id_from:  # the id is derived from another column, in the read tasks
            read = [c for c in read if c != cfg.columns.id] + ([cfg.id_from] if cfg.id_from not in read else [])
        ds = ds.select_columns(read + (["path"] if pre.kinds.needs_file_paths else []))
        if cfg.id_from:
            from .inputs import add_derived_ids

            ds = ds.map_batches(add_derived_ids, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"id_from": cfg.id_from, "id_column": cfg.columns.id})
        if plan.needs_filter:
            ds = ds.filter(expr=col(cfg.columns.id).is_in(plan.todo_ids()))
    # Small files arrive as one block; one block per K rows spreads them (docs/batch_job.md#ray-data-settings).
    ds = ds.repartition(target_num_rows_per_block=cfg.instances_per_actor)
    return ds.map_batches(
        ReconstructionWorker,
        fn_constructor_kwargs={"settings": settings},
        batch_size=cfg.instances_per_actor,
        batch_format="pyarrow",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,  # 0 on CPU: a GPU request on a CPU node waits forever (docs/batch_job.md#devices)
        # Fixed pool + one task per actor = pull-style balancing (docs/batch_job.md#ray-data-settings).
        compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
        udf_modifying_row_count=False,
    )


def _read_with_row_index_ids(cfg: JobConfig, pre: Preflight):
    """``--id-from row-index``: one read task per row group, which knows its rows' positions."""
    import ray.data

    from .row_index import read_row_groups, row_group_tasks

    plan = pre.plan
    columns = [c for c in cfg.columns.read_list() if c != cfg.columns.id
               and (pre.kinds.has_latent or c != cfg.columns.latent)]
    tasks = row_group_tasks(pre.inputs.fs, plan.files_to_read, plan.todo_by_file)
    return ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        read_row_groups, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"fs": pre.inputs.fs, "root": pre.inputs.root, "columns": columns, "id_column": cfg.columns.id,
                   "todo": set(plan.todo_ids()), "with_paths": pre.kinds.needs_file_paths})
