"""A real RTSP server for the tests: GStreamer's gst-rtsp-server (Debian's gir1.2-gst-rtsp-server-1.0, run by the
system python3 with python3-gi), serving a folder of JPEG frames, looped, as H.264 (x264, from
gstreamer1.0-plugins-ugly) at rtsp://127.0.0.1:PORT/live. Usage: /usr/bin/python3 rtsp_server.py FRAMES_DIR PORT"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

frames, port = sys.argv[1], sys.argv[2]
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( multifilesrc location={frames}/%04d.jpg loop=true caps=image/jpeg,framerate=30/1 ! jpegdec ! "
                   "videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast "
                   "key-int-max=15 ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{port}")
print(f"rtsp_server: serving rtsp://127.0.0.1:{port}/live", flush=True)
GLib.MainLoop().run()
