from django.urls import path

from timeline.consumers import TimelineConsumer

websocket_urlpatterns = [path("ws/timeline/", TimelineConsumer.as_asgi())]
