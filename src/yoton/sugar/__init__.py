"""Sugar on top of the channels: file objects over channels, a two-way text socket,
and a plain-TCP request server."""
