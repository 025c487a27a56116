"""loyalty_ops: the loyalty platform's database operations as Dagster assets, jobs, schedules and sensors."""
