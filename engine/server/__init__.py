"""The engine's front: the composition root, routes (native, A1111), the job service, events, inputs,
the model shelf and the fair persistent queue. It reaches the device side only through
`engine.device.runner` (the job runner's interface); `engine.server.app` alone builds device objects."""
