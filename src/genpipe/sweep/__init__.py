"""Many experiments at once: `genpipe sweep` (submit), the engines (local: DVC's queue;
slurm: an sbatch array), one task a point in a clone of its own (task), and the records
the submitting machine keeps of them (record)."""
