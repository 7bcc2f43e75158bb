"""Built-in ground-truth phantoms: Circle-of-Willis TOF-MRA with TopCoW labels, trabecular bone."""
