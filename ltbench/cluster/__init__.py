"""Running ltbench on clusters through submitit: the cluster options and executors (:mod:`.slurm`),
the job body every launched run executes (:mod:`.job`) and sweeps, their submission and status
(:mod:`.sweep`). The runner knows nothing of this package."""
