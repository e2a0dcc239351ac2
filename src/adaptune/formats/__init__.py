"""File formats: adaptune's own adapter and fusion folders, AdapterHub folders. Built on core and methods."""
