"""The torch side: the device, model families and loading, the pipeline cache, plans per mode, the maker
of one job's images, the local worker thread and the Ray actors."""
