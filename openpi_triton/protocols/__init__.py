"""Wire codecs robots already speak: openpi's msgpack-numpy (WebSocket) and openpi-flash's LocalFrame."""
