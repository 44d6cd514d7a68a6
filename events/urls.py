from django.urls import path

from events import api

urlpatterns = [
    path("agents/<slug:slug>/webhooks/", api.AgentWebhooks.as_view(), name="agent-webhooks"),
    path("webhooks/<int:pk>/", api.WebhookDetail.as_view(), name="webhook-detail"),
    path(
        "webhooks/<int:pk>/deliveries/",
        api.WebhookDeliveries.as_view(),
        name="webhook-deliveries",
    ),
    path(
        "deliveries/<int:pk>/redeliver/",
        api.DeliveryRedeliver.as_view(),
        name="delivery-redeliver",
    ),
]
