//! sd-webui-supervisor: runs a Stable Diffusion web UI as a well-behaved systemd service.
